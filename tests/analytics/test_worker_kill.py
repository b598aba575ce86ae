"""A worker killed in the middle of a recompute leaves the old snapshot, and the
task completes when the message is delivered again (acks_late), on a real
Celery worker with Redis and PostgreSQL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.db import connection

from analytics.models import FunnelSnapshot, SnapshotStatus
from analytics.services import snapshot_compute, snapshot_ensure
from analytics.types import FunnelQuery
from funnels.services import funnel_create
from tests.story import START, DealStory

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]


def worker_env() -> dict[str, str]:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": os.environ.get("TEST_WORKER_REDIS_URL", "redis://127.0.0.1:6379/14"),
        "CELERY_VISIBILITY_TIMEOUT": "2",
        "PYTHONPATH": str(ROOT),
    }


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def status_of(snapshot_id: int) -> FunnelSnapshot:
    return FunnelSnapshot.objects.get(pk=snapshot_id)


def test_killed_worker_keeps_the_old_snapshot_and_the_redelivered_task_completes():
    env = worker_env()
    try:
        broker = redis.Redis.from_url(env["REDIS_URL"])
        broker.flushdb()
    except redis.exceptions.ConnectionError:
        pytest.skip("needs Redis on 127.0.0.1:6379")
    funnel = funnel_create(actor=None, name="Four", stages=["S1", "S2", "S3", "S4"])
    DealStory(funnel).enters("S1").moves_to("S2")
    query = FunnelQuery(
        funnel_id=funnel.pk, date_from=START.date().replace(day=1), date_to=START.date()
    )
    snapshot = snapshot_ensure(query=query, label="test")
    snapshot_compute(snapshot_id=snapshot.pk)
    old = status_of(snapshot.pk)
    assert [s["count"] for s in old.result["steps"]] == [1, 1, 0, 0, 0]
    DealStory(funnel).enters("S1")  # the figures have moved on since

    logs = []
    hanging = subprocess.Popen(
        [sys.executable, "-m", "tests.analytics.slow_worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    survivor = None
    try:
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import django, os;"
                "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'crm.settings');"
                "django.setup(); from analytics.tasks import compute_snapshot;"
                f"compute_snapshot.delay({snapshot.pk})",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=60,
        )
        wait_for(
            lambda: status_of(snapshot.pk).status == SnapshotStatus.RUNNING,
            60,
            "the hanging worker to start the task",
        )
        hanging.send_signal(signal.SIGKILL)
        hanging.wait(timeout=10)

        killed = status_of(snapshot.pk)
        assert killed.status == SnapshotStatus.RUNNING
        assert (killed.result, killed.computed_at) == (old.result, old.computed_at)

        survivor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "crm",
                "worker",
                "--pool=solo",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        done = wait_for(
            lambda: (
                (s := status_of(snapshot.pk)).status == SnapshotStatus.DONE
                and s.computed_at != old.computed_at
                and s
            ),
            90,
            "the redelivered task to complete",
        )
        assert [s["count"] for s in done.result["steps"]] == [2, 1, 0, 0, 0]
        assert done.progress == 100
    finally:
        for process in (hanging, survivor):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
            if process is not None and process.stdout is not None:
                logs.append(process.stdout.read().decode(errors="replace")[-3000:])
        broker.flushdb()
    assert logs  # worker output is kept for the failure report above
