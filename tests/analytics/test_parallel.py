"""On PostgreSQL outside a transaction the report's queries run on two connections
that share one snapshot; the figures are the same as one after another."""

import datetime

import pytest
from django.db import connection, transaction

from accounts.models import User
from analytics import engine
from analytics.types import FunnelQuery, Mode
from funnels.services import funnel_create
from tests.story import START, DealStory

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]


def test_two_connections_give_the_figures_of_one(monkeypatch):
    funnel = funnel_create(actor=None, name="Four", stages=["S1", "S2", "S3", "S4"])
    masha = User.objects.create(username="masha")
    DealStory(funnel, owner=masha, actor=masha).enters("S1").moves_to("S3").moves_to("S2").won()
    DealStory(funnel).enters("S1").moves_to("S2").lost("Spam")
    DealStory(funnel, owner=masha).enters("S2")
    used = []
    parallel = engine._run_on_two_connections
    monkeypatch.setattr(
        engine, "_run_on_two_connections", lambda jobs: used.append(len(jobs)) or parallel(jobs)
    )
    for mode in Mode:
        for group_by in (None, "owner"):
            query = FunnelQuery(
                funnel_id=funnel.pk,
                date_from=START.date().replace(day=1),
                date_to=START.date() + datetime.timedelta(days=30),
                mode=mode,
                group_by=group_by,
                window_days=None if mode == Mode.CALENDAR else 7,
            )
            assert not connection.in_atomic_block
            two = engine.funnel_report(query)
            with transaction.atomic():
                one = engine.funnel_report(query)
            assert (two.totals, two.groups) == (one.totals, one.groups), (mode, group_by)
            assert [s.count for s in two.totals.steps] == [3, 3, 1, 1, 1]
    # Time in each of the 4 stages, the cube, the window's late reaches or the calendar's
    # edges, and lengths with response times: in one pass, or by owner in two (each
    # from its own index in owner order).
    assert used == [7, 8, 7, 8]


def test_both_connections_read_the_same_snapshot():
    def snapshot():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.1)")  # long enough for both workers to take one
            cursor.execute("SELECT pg_backend_pid(), pg_current_snapshot()::text")
            return cursor.fetchone()

    results = engine._run_on_two_connections({f"job{i}": snapshot for i in range(4)})

    pids = {pid for pid, _ in results.values()}
    snapshots = {taken for _, taken in results.values()}
    assert len(results) == 4 and len(pids) == 2 and len(snapshots) == 1
