"""Two people change one deal at the same moment: the row lock serialises them and the
history stays a chain. PostgreSQL only: SQLite has no row locks to test."""

import datetime
import itertools
import threading

import pytest
from django.db import connection
from django.utils import translation

from crm.errors import Conflict
from deals.models import Deal, StageChange, StatusChange, Task
from deals.services import (
    deal_create,
    deal_move_to_stage,
    deal_postpone,
    deals_resume_due_postponed,
)
from tests.factories import FunnelFactory, UserFactory

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]

ROUNDS = 5


def run_at_once(*calls):
    """Run each call in its own thread and DB connection, released together by a barrier.

    Returns what each call returned or raised, in order.
    """
    barrier = threading.Barrier(len(calls))
    outcomes: list = [None] * len(calls)

    def run(index, call):
        try:
            barrier.wait(timeout=10)
            with translation.override("en"):  # the active language is per thread
                outcomes[index] = call()
        except Exception as exc:  # the test inspects it
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


@pytest.fixture
def cast():
    manager = UserFactory(username="masha")
    funnel = FunnelFactory(name="B2B", members=[manager])
    stages = {stage.name: stage for stage in funnel.stages.all()}
    return manager, funnel, stages


def assert_history_is_a_chain(deal_id: int, moves: int) -> None:
    deal = Deal.objects.get(pk=deal_id)
    changes = list(StageChange.objects.filter(deal_id=deal_id))
    assert len(changes) == 1 + moves
    assert changes[0].from_stage_id is None
    for previous, change in itertools.pairwise(changes):
        assert change.from_stage_id == previous.to_stage_id
        assert change.at >= previous.at
    assert deal.stage_id == changes[-1].to_stage_id
    assert deal.stage_entered_at == changes[-1].at
    assert deal.version == 1 + moves


def test_two_simultaneous_moves_both_land_and_the_history_is_a_chain(cast):
    manager, funnel, stages = cast
    for _ in range(ROUNDS):
        deal = deal_create(actor=manager, funnel=funnel, title="Chairs", owner=manager)

        outcomes = run_at_once(
            lambda deal=deal: deal_move_to_stage(actor=manager, deal=deal.pk, stage=stages["S2"]),
            lambda deal=deal: deal_move_to_stage(actor=manager, deal=deal.pk, stage=stages["S3"]),
        )

        assert [type(outcome) for outcome in outcomes] == [Deal, Deal]
        assert_history_is_a_chain(deal.pk, moves=2)


def test_two_moves_from_the_same_version_one_wins_the_other_conflicts(cast):
    manager, funnel, stages = cast
    for _ in range(ROUNDS):
        deal = deal_create(actor=manager, funnel=funnel, title="Chairs", owner=manager)

        outcomes = run_at_once(
            *(
                lambda deal=deal, stage=stages[name]: deal_move_to_stage(
                    actor=manager, deal=deal.pk, stage=stage, expected_version=1
                )
                for name in ("S2", "S3")
            )
        )

        assert sorted(type(outcome).__name__ for outcome in outcomes) == ["Conflict", "Deal"]
        winner = next(outcome for outcome in outcomes if isinstance(outcome, Deal))
        loser = next(outcome for outcome in outcomes if isinstance(outcome, Conflict))
        assert loser.message == (
            "Someone changed this deal while you were looking at it. Reload it and try again."
        )
        assert_history_is_a_chain(deal.pk, moves=1)
        assert Deal.objects.get(pk=deal.pk).stage_id == winner.stage_id


def test_two_overlapping_resume_runs_resume_each_deal_once(cast):
    manager, funnel, _ = cast
    now = datetime.datetime.now(tz=datetime.UTC)
    day = datetime.timedelta(days=1)
    deal = deal_create(actor=manager, funnel=funnel, title="Chairs", owner=manager, at=now - day)
    deal_postpone(actor=manager, deal=deal, next_contact_at=now - day / 2, at=now - day)

    outcomes = run_at_once(
        lambda: deals_resume_due_postponed(at=now), lambda: deals_resume_due_postponed(at=now)
    )

    assert sorted(outcomes) == [0, 1]
    assert list(StatusChange.objects.filter(deal=deal).values_list("from_status", "to_status")) == [
        ("open", "postponed"),
        ("postponed", "open"),
    ]
    assert Task.objects.filter(deal=deal).count() == 1
    assert Deal.objects.get(pk=deal.pk).version == 3
