"""manage.py bench_analytics: load N synthetic deals and time the funnel engine.

Run it on a scratch PostgreSQL database; it adds a funnel named "Bench N" and
reuses it on the next run with the same N.
"""

import datetime
import json
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from analytics.bench import bench_funnel, plan_deals
from deals.bulk import deals_bulk_load
from deals.models import Deal, StageChange

# Runs in a fresh process so that its peak memory is the computation's alone.
PROBE = """
import json, os, resource, sys, time, datetime
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm.settings")
import django
django.setup()
from analytics.engine import funnel_report
from analytics.types import FunnelQuery, Mode
from analytics.services import snapshots_refresh
spec = json.loads(sys.argv[1])
started = time.perf_counter()
if spec["kind"] == "recompute":
    from crm.celery import app
    app.conf.task_always_eager = True
    count = len(snapshots_refresh(funnel_id=spec["funnel_id"]))
else:
    query = FunnelQuery.build(
        funnel_id=spec["funnel_id"],
        date_from=datetime.date.fromisoformat(spec["from"]),
        date_to=datetime.date.fromisoformat(spec["to"]),
        mode=Mode(spec["mode"]),
        group_by=spec.get("group_by"),
        filters=spec.get("filters") or {},
        window_days=spec.get("window"),
    )
    report = funnel_report(query)
    count = report.totals.entered
seconds = time.perf_counter() - started
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": round(seconds, 3), "count": count, "max_rss_mb": round(rss_mb, 1)}))
"""


class Command(BaseCommand):
    help = "Benchmark the funnel engine on N synthetic deals (PostgreSQL)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--deals", type=int, default=100_000)
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--chunk", type=int, default=20_000)
        parser.add_argument("--repeat", type=int, default=3, help="Runs per query; best is kept.")

    def handle(self, *args, **options) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("Run the benchmark on PostgreSQL: set DATABASE_URL.")
        n = options["deals"]
        funnel = bench_funnel(f"Bench {n}")
        have = Deal.objects.filter(funnel=funnel).count()
        load_seconds = None
        if have == 0:
            started = time.perf_counter()
            now = timezone.now()
            plans = []
            for plan in plan_deals(funnel, count=n, seed=options["seed"], now=now):
                plans.append(plan)
                if len(plans) == options["chunk"]:
                    deals_bulk_load(funnel=funnel, plans=plans)
                    plans = []
                    self.stderr.write(f"loaded {Deal.objects.filter(funnel=funnel).count()}")
            if plans:
                deals_bulk_load(funnel=funnel, plans=plans)
            with connection.cursor() as cursor:
                # Autovacuum may be off (it is on this machine): without a vacuum, index-only
                # scans would visit the heap for every row.
                cursor.execute("VACUUM ANALYZE")
            load_seconds = round(time.perf_counter() - started, 1)
        elif have != n:
            raise CommandError(f"“{funnel.name}” has {have} deals, not {n}: use a fresh database.")
        stage_changes = StageChange.objects.filter(deal__funnel=funnel).count()

        today = timezone.localdate()
        year_ago = today - datetime.timedelta(days=364)
        base = {"funnel_id": funnel.pk, "from": year_ago.isoformat(), "to": today.isoformat()}
        probes = {
            "cohort_year": {**base, "kind": "report", "mode": "cohort"},
            "cohort_year_by_manager": {
                **base,
                "kind": "report",
                "mode": "cohort",
                "group_by": "owner",
            },
            "calendar_year": {**base, "kind": "report", "mode": "calendar"},
            "calendar_year_by_manager": {
                **base,
                "kind": "report",
                "mode": "calendar",
                "group_by": "owner",
            },
            "cohort_year_window_30": {**base, "kind": "report", "mode": "cohort", "window": 30},
            "filtered_ad_hoc": {
                **base,
                "kind": "report",
                "mode": "cohort",
                "group_by": "source",
                "filters": {"region": ["Moscow", "Kazan"], "temperature": ["warm"]},
            },
            "full_recompute": {"funnel_id": funnel.pk, "kind": "recompute"},
        }
        results = {}
        for name, spec in probes.items():
            runs = [
                self._probe(spec)
                for _ in range(1 if name == "full_recompute" else options["repeat"])
            ]
            best = min(runs, key=lambda r: r["seconds"])
            results[name] = {**best, "runs": [r["seconds"] for r in runs]}
            self.stderr.write(f"{name}: {best}")
        self.stdout.write(
            json.dumps(
                {
                    "deals": n,
                    "stage_changes": stage_changes,
                    "load_seconds": load_seconds,
                    "database": settings.DATABASES["default"]["ENGINE"],
                    "results": results,
                },
                indent=2,
            )
        )

    def _probe(self, spec: dict) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
            cwd=settings.BASE_DIR,
        )
        if done.returncode:
            raise CommandError(done.stderr[-2000:])
        return json.loads(done.stdout.strip().splitlines()[-1])
