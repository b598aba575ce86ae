"""manage.py bench_board: server time and SQL queries of the board with N open deals.

Loads a funnel with N open deals (bulk, on a scratch database), then renders
its board through the real view, as an admin (every deal) and as a manager
(his share), and reports the median and worst time and the query count.
"""

import datetime
import json
import statistics
import time

from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import Role, User
from deals.bulk import DealPlan, deals_bulk_load
from deals.models import Deal
from funnels.models import Funnel
from funnels.services import funnel_create


class Command(BaseCommand):
    help = "Time the board view with N open deals."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--deals", type=int, default=2000)
        parser.add_argument("--repeat", type=int, default=10)

    def handle(self, *args, **options) -> None:
        n = options["deals"]
        name = f"Board bench {n}"
        password = make_password("bench")
        admin, _ = User.objects.get_or_create(
            username="board-bench-admin", defaults={"role": Role.ADMIN, "password": password}
        )
        managers = [
            User.objects.get_or_create(
                username=f"board-bench-{i}", defaults={"password": password}
            )[0]
            for i in range(4)
        ]
        funnel = Funnel.objects.filter(name=name).first()
        if funnel is None:
            funnel = funnel_create(
                actor=None,
                name=name,
                stages=[{"name": f"Stage {i + 1}", "rotting_days": 7} for i in range(6)],
                members=managers,
            )
            stages = list(funnel.stages.order_by("position").values_list("pk", flat=True))
            now = timezone.now()
            plans = []
            for i in range(n):
                created = now - datetime.timedelta(hours=1 + i)
                path = [(stages[0], created)]
                if i % len(stages):
                    path.append((stages[i % len(stages)], created + datetime.timedelta(minutes=30)))
                plans.append(
                    DealPlan(
                        title=f"Deal {i}",
                        created_at=created,
                        path=path,
                        owner_id=managers[i % len(managers)].pk,
                        amount=10_000 + i,
                    )
                )
            deals_bulk_load(funnel=funnel, plans=plans)
        url = reverse("deals:board", args=[funnel.pk])
        results = {}
        for user in (admin, managers[0]):
            client = Client()
            client.force_login(user)
            client.get(url)  # warm up
            times, queries = [], 0
            for _ in range(options["repeat"]):
                with CaptureQueriesContext(connection) as captured:
                    started = time.perf_counter()
                    response = client.get(url)
                    times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.status_code
                queries = len(captured.captured_queries)
            results[user.username] = {
                "median_ms": round(statistics.median(times), 1),
                "max_ms": round(max(times), 1),
                "queries": queries,
                "deals_visible": Deal.objects.filter(funnel=funnel, owner=user).count()
                if user != admin
                else n,
            }
        self.stdout.write(
            json.dumps(
                {"open_deals": n, "database": connection.vendor, "results": results}, indent=2
            )
        )
