"""manage.py bench_dashboard: server time and SQL queries of the dashboard page.

Renders ``/dashboard/`` through the real view (Django's test client) for a
funnel loaded by ``bench_analytics``, as an administrator and as a head of
sales (created here if missing, with a team of half the bench managers), for
the default view and a few presets and modes, and prints JSON: the median and
worst time of N renders after a warm-up, the SQL query count, the queries that
read the deals table, and how many reports the page had to compute (0 when
every figure came from a stored snapshot).

``--refresh`` first computes the funnel's standard snapshots in this process
(``snapshots_refresh`` with Celery eager), as the beat schedule would.
"""

import json
import os
import statistics
import time

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import Role, Team, User
from analytics import services
from analytics.selectors import snapshot_progress
from funnels.models import Funnel

HEAD = "bench-head"
ADMIN = "bench-admin"
MANAGER = "bench00"  # a manager's own view: no stored snapshots, computed in the request
TEAM = "Bench team"
# (case, user, query string): the default view and presets in both modes.
CASES = [
    ("default", ADMIN, {}),
    ("calendar_this_month", ADMIN, {"mode": "calendar"}),
    ("last_quarter", ADMIN, {"period": "last_quarter"}),
    ("last_12_weeks_calendar", ADMIN, {"period": "last_12_weeks", "mode": "calendar"}),
    ("head_default", HEAD, {}),
    ("head_last_week_calendar", HEAD, {"period": "last_week", "mode": "calendar"}),
    ("manager_default", MANAGER, {}),
    ("manager_this_month_calendar", MANAGER, {"mode": "calendar"}),
]


class Command(BaseCommand):
    help = "Time the dashboard page of a benchmark funnel (PostgreSQL, after bench_analytics)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--funnel", default="Bench 1000000")
        parser.add_argument("--repeat", type=int, default=10, help="Timed renders per case.")
        parser.add_argument(
            "--refresh", action="store_true", help="Compute the standard snapshots first."
        )

    def handle(self, *args, **options) -> None:
        funnel = Funnel.objects.filter(name=options["funnel"]).first()
        if funnel is None:
            raise CommandError(f"No funnel “{options['funnel']}”: run bench_analytics first.")
        users = self._users(funnel)
        refresh_seconds = None
        if options["refresh"]:
            refresh_seconds = self._refresh(funnel)
        progress = snapshot_progress(funnel=funnel)
        if progress.done < progress.total:
            self.stderr.write(
                f"Only {progress.done} of {progress.total} standard snapshots are done: "
                "the page will compute or queue the rest (use --refresh)."
            )
        url = reverse("analytics:dashboard")
        results = {}
        for case, username, params in CASES:
            results[case] = self._measure(
                users[username], url, {"funnel": funnel.pk, **params}, repeat=options["repeat"]
            )
            self.stderr.write(f"{case}: {results[case]}")
        self.stdout.write(
            json.dumps(
                {
                    "funnel": funnel.name,
                    "deals": funnel.deals.count(),
                    "database": connection.vendor,
                    "debug": settings.DEBUG,
                    "snapshots_done": f"{progress.done} of {progress.total}",
                    "refresh_seconds": refresh_seconds,
                    "load_average": [round(load, 2) for load in os.getloadavg()],
                    "results": results,
                },
                indent=2,
            )
        )

    def _users(self, funnel: Funnel) -> dict[str, User]:
        """An administrator, and a head of sales whose team is the first half of the
        funnel's managers (by username); idempotent, so that his snapshots stay his."""
        password = make_password(None)
        admin, _created = User.objects.get_or_create(
            username=ADMIN, defaults={"role": Role.ADMIN, "password": password}
        )
        head, _created = User.objects.get_or_create(
            username=HEAD, defaults={"role": Role.HEAD, "password": password}
        )
        team, _created = Team.objects.get_or_create(name=TEAM, defaults={"head": head})
        managers = list(
            funnel.members.filter(role=Role.MANAGER)
            .order_by("username")
            .values_list("pk", flat=True)
        )
        members = managers[: len(managers) // 2]
        User.objects.filter(team=team).exclude(pk__in=members).update(team=None)
        User.objects.filter(pk__in=members).update(team=team)
        return {ADMIN: admin, HEAD: head, MANAGER: User.objects.get(username=MANAGER)}

    def _refresh(self, funnel: Funnel) -> float:
        from crm.celery import app

        app.conf.task_always_eager = True
        started = time.perf_counter()
        count = len(services.snapshots_refresh(funnel_id=funnel.pk))
        seconds = round(time.perf_counter() - started, 1)
        self.stderr.write(f"refreshed {count} snapshots in {seconds} s")
        return seconds

    def _measure(self, user: User, url: str, params: dict, *, repeat: int) -> dict:
        client = Client(headers={"accept-language": "en"})
        client.force_login(user)
        computed = []
        real = services.funnel_report

        def counting(query):
            computed.append(query)
            return real(query)

        services.funnel_report = counting
        try:
            for _ in range(2):  # warm up
                response = client.get(url, params)
                if response.status_code != 200:
                    raise CommandError(f"{url} {params}: HTTP {response.status_code}")
            computed.clear()
            # With DEBUG on, a full query log (9000 entries) would hide this request's queries.
            connection.queries_log.clear()
            with CaptureQueriesContext(connection) as captured:
                response = client.get(url, params)
            reports_computed = len(computed)
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                client.get(url, params)
                times.append((time.perf_counter() - started) * 1000)
        finally:
            services.funnel_report = real
        deal_queries = [q["sql"][:160] for q in captured if '"deals_deal"' in q["sql"]]
        return {
            "median_ms": round(statistics.median(times), 1),
            "worst_ms": round(max(times), 1),
            "queries": len(captured.captured_queries),
            "deal_table_queries": deal_queries,
            "reports_computed": reports_computed,
            "pending": "The report is being computed" in response.content.decode(),
        }
