"""Benchmark the lead intake over HTTP: gunicorn on PostgreSQL, concurrent clients.

Three runs against ``POST /api/v1/leads/`` on a fresh funnel with three managers:
single leads as fast as the clients can send them, batches, and single leads
paced at a fixed rate. Prints one JSON document: leads/s and p50/p95 latency per
run, and whether the funnel has exactly one deal per distinct lead sent.

It writes to the configured database (a new funnel, users and a key each run):
use a scratch database. Everything stays on the loopback interface; every loop
is bounded by its duration and gunicorn is stopped on the way out.
"""

import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from accounts.models import ApiScope, User
from accounts.services import api_key_create
from deals.models import Deal
from funnels.services import funnel_create

URL = "/api/v1/leads/"
REQUEST_TIMEOUT_SECONDS = 30
STARTUP_TIMEOUT_SECONDS = 30
# Throttling is part of the product, not of the intake's speed: the gunicorn under
# test gets a rate far above anything the clients can reach.
BENCH_THROTTLE_RATE = "10000000/min"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass
class RunStats:
    """What the clients of one run saw. Appended to under ``lock``."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    leads_sent: int = 0
    leads_created: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, *, latency_ms: float, status: str, sent: int, created: int) -> None:
        with self.lock:
            self.latencies_ms.append(latency_ms)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.leads_sent += sent
            self.leads_created += created


class LeadSource:
    """Distinct leads: each has its own external_id and phone number."""

    def __init__(self, tag: str, first_number: int):
        self.tag = tag
        self._next = first_number
        self._lock = threading.Lock()

    def take(self, count: int) -> list[dict]:
        with self._lock:
            start = self._next
            self._next += count
        return [
            {
                "title": f"Bench lead {number}",
                "contact": {"name": f"Client {number}", "phone": f"+79{number:09d}"},
                "source": "bench",
                "external_id": f"{self.tag}-{number}",
            }
            for number in range(start, start + count)
        ]


class Command(BaseCommand):
    help = (
        "Benchmark POST /api/v1/leads/ under gunicorn on PostgreSQL (writes to the "
        "configured database: use a scratch one). Prints JSON."
    )

    def add_arguments(self, parser):
        parser.add_argument("--clients", type=int, default=16, help="Concurrent client threads.")
        parser.add_argument("--duration", type=float, default=10.0, help="Seconds per run.")
        parser.add_argument("--batch-size", type=int, default=100)
        parser.add_argument(
            "--runs",
            nargs="+",
            choices=["single", "batch", "paced"],
            default=["single", "batch", "paced"],
            help="Which runs, in this order.",
        )
        parser.add_argument("--rate", type=float, default=100.0, help="Requests/s, paced run.")
        # One worker of 16 threads on this 2-core machine: its Python gets about one core
        # and PostgreSQL the other. With two, each keep-alive client stays with the
        # worker that accepted it, and an uneven split makes runs differ by half.
        parser.add_argument("--workers", type=int, default=1, help="gunicorn workers.")
        parser.add_argument(
            "--threads", type=int, default=16, help="Threads per gunicorn worker (gthread)."
        )

    def handle(self, *args, **options):
        if connection.vendor != "postgresql":
            raise CommandError(
                "bench_intake measures the production setup: set DATABASE_URL to a "
                "PostgreSQL scratch database."
            )
        if not settings.DATABASE_URL:
            raise CommandError("DATABASE_URL must be set so that gunicorn uses the same database.")
        clients = max(1, min(options["clients"], 64))
        duration = max(1.0, min(options["duration"], 120.0))
        batch_size = max(1, min(options["batch_size"], 1000))
        rate = max(1.0, min(options["rate"], 10_000.0))

        tag = f"bench-{timezone.now():%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
        funnel, raw_key = self._setup(tag)
        leads = LeadSource(tag, first_number=int(time.time()) % 100_000 * 10_000)
        port = _free_port()
        log_path = Path(tempfile.gettempdir()) / f"{tag}-gunicorn.log"
        with open(log_path, "wb") as log:
            server = self._start_gunicorn(port, options["workers"], options["threads"], log)
            try:
                self._wait_until_up(port, server, log_path)
                headers = {
                    "Authorization": f"Bearer {raw_key}",
                    "Content-Type": "application/json",
                    # As behind the TLS-terminating proxy of a production install.
                    "X-Forwarded-Proto": "https",
                }
                smoke = self._smoke(port, headers, leads)
                common = {"clients": clients, "duration": duration}
                plans = {
                    "single": {"batch_size": None},
                    "batch": {"batch_size": batch_size},
                    "paced": {"batch_size": None, "rate": rate},
                }
                names = {
                    "single": "single",
                    "batch": f"batch_{batch_size}",
                    "paced": f"paced_{rate:g}_per_s",
                }
                runs = {
                    names[run]: self._run(port, headers, leads, **plans[run], **common)
                    for run in options["runs"]
                }
            finally:
                self._stop(server)

        leads_sent = smoke + sum(run["leads_sent"] for run in runs.values())
        leads_created = smoke + sum(run["leads_created"] for run in runs.values())
        deals = Deal.objects.filter(funnel=funnel).count()
        report = {
            "database": connection.settings_dict["NAME"],
            "gunicorn_workers": options["workers"],
            "gunicorn_threads": options["threads"],
            "clients": clients,
            "funnel_id": funnel.pk,
            "runs": runs,
            "check": {
                "distinct_leads_sent": leads_sent,
                "leads_acknowledged_created": leads_created,
                "deals_in_funnel": deals,
                "one_deal_per_lead": deals == leads_sent == leads_created,
            },
            "gunicorn_log": str(log_path),
        }
        self.stdout.write(json.dumps(report, indent=2))
        if not report["check"]["one_deal_per_lead"]:
            raise CommandError("The number of deals differs from the number of leads sent.")

    # ------------------------------------------------------------ setup

    def _setup(self, tag: str):
        password = make_password(None)
        managers = [
            User.objects.create(username=f"{tag}-m{number}", password=password)
            for number in range(1, 4)
        ]
        funnel = funnel_create(
            actor=None,
            name=f"Bench {tag}",
            stages=[
                {"name": "New", "tasks": [("Call the lead", 15)]},
                "Qualified",
                "Offer",
            ],
            members=managers,
        )
        _, raw_key = api_key_create(name=tag, scopes=[ApiScope.LEADS_WRITE], funnel=funnel)
        return funnel, raw_key

    def _start_gunicorn(self, port: int, workers: int, threads: int, log) -> subprocess.Popen:
        gunicorn = Path(sys.executable).parent / "gunicorn"
        env = {
            **os.environ,
            "DATABASE_URL": settings.DATABASE_URL,
            "DEBUG": "false",
            # As in docker-compose.yml: each worker keeps its database connection.
            "DB_PERSISTENT_CONNECTIONS": "true",
            "SECRET_KEY": secrets.token_urlsafe(40),
            "ALLOWED_HOSTS": "127.0.0.1",
            "API_LEADS_THROTTLE_RATE": BENCH_THROTTLE_RATE,
            "API_THROTTLE_RATE": BENCH_THROTTLE_RATE,
        }
        return subprocess.Popen(
            [
                str(gunicorn),
                "crm.wsgi:application",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                str(max(1, min(workers, 16))),
                # As in docker-compose.yml: threaded workers, whose concurrent single
                # leads share a transaction (deals.intake's group commit).
                "--worker-class",
                "gthread",
                "--threads",
                str(max(1, min(threads, 64))),
                "--timeout",
                "60",
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_until_up(self, port: int, server: subprocess.Popen, log_path: Path) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise CommandError(f"gunicorn exited with {server.returncode}; see {log_path}.")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", URL)
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.2)
        raise CommandError(f"gunicorn did not answer within {STARTUP_TIMEOUT_SECONDS} s.")

    def _smoke(self, port: int, headers: dict, leads: LeadSource) -> int:
        """Post one lead and insist on a 201 before measuring anything; return 1."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            conn.request("POST", URL, body=json.dumps(leads.take(1)[0]), headers=headers)
            response = conn.getresponse()
            body = response.read()[:500].decode("utf-8", "replace")
        finally:
            conn.close()
        if response.status != 201:
            raise CommandError(f"A test lead got {response.status} instead of 201: {body}")
        return 1

    def _stop(self, server: subprocess.Popen) -> None:
        if server.poll() is not None:
            return
        server.send_signal(signal.SIGTERM)  # the arbiter stops its workers
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)

    # ------------------------------------------------------------ load

    def _run(
        self,
        port: int,
        headers: dict,
        leads: LeadSource,
        *,
        clients: int,
        duration: float,
        batch_size: int | None,
        rate: float | None = None,
    ) -> dict:
        stats = RunStats()
        start = time.monotonic()
        deadline = start + duration
        slots = iter(range(10**9))
        slots_lock = threading.Lock()

        def next_slot() -> float | None:
            """The scheduled send time of the next paced request, or None when over."""
            with slots_lock:
                at = start + next(slots) / rate
            return at if at < deadline else None

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS)
            try:
                while True:
                    scheduled = None
                    if rate is not None:
                        scheduled = next_slot()
                        if scheduled is None:
                            return
                        time.sleep(max(0.0, scheduled - time.monotonic()))
                        if time.monotonic() >= deadline:
                            # Behind schedule at the end: stop rather than drain a backlog.
                            return
                    elif time.monotonic() >= deadline:
                        return
                    batch = leads.take(batch_size or 1)
                    body = json.dumps({"leads": batch} if batch_size else batch[0]).encode()
                    sent_at = time.monotonic()
                    try:
                        conn.request("POST", URL, body=body, headers=headers)
                        response = conn.getresponse()
                        payload = response.read()
                        status = str(response.status)
                    except (OSError, http.client.HTTPException) as error:
                        conn.close()
                        status, payload = type(error).__name__, b""
                        with stats.lock:
                            stats.errors.append(f"{status}: {error}"[:200])
                    # Paced: from the scheduled time, so a queue behind a slow
                    # server shows in the latency instead of hiding in fewer requests.
                    latency = (time.monotonic() - (scheduled or sent_at)) * 1000
                    stats.record(
                        latency_ms=latency,
                        status=status,
                        sent=len(batch),
                        created=self._created(payload) if status in ("200", "201") else 0,
                    )
            finally:
                conn.close()

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=duration + REQUEST_TIMEOUT_SECONDS + 5)
        elapsed = time.monotonic() - start
        requests = len(stats.latencies_ms)
        return {
            "seconds": round(elapsed, 2),
            "requests": requests,
            "requests_per_s": round(requests / elapsed, 1),
            "leads_sent": stats.leads_sent,
            "leads_created": stats.leads_created,
            "leads_per_s": round(stats.leads_created / elapsed, 1),
            "p50_ms": _round(statistics.median(stats.latencies_ms) if requests else None),
            "p95_ms": _round(_percentile(stats.latencies_ms, 0.95)),
            "max_ms": _round(max(stats.latencies_ms, default=None)),
            "statuses": stats.statuses,
            "errors": stats.errors[:5],
        }

    @staticmethod
    def _created(payload: bytes) -> int:
        try:
            data = json.loads(payload)
        except ValueError:
            return 0
        if "results" in data:
            return int(data.get("created", 0))
        return 1 if data.get("status") == "created" else 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
