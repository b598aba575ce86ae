"""The deal invariants the database itself keeps, and history that cannot be rewritten."""

import datetime

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from deals.models import DealStatus, StageChange, StatusChange
from deals.services import deal_create
from tests.story import DealStory, deal_row, row_counts

pytestmark = pytest.mark.django_db


@pytest.fixture
def deal(manager, funnel):
    return deal_create(actor=manager, funnel=funnel, title="Chairs", owner=manager)


def test_the_database_refuses_a_lost_deal_without_a_reason(deal):
    before = deal_row(deal)
    deal.status = DealStatus.LOST
    deal.closed_at = timezone.now()

    with pytest.raises(IntegrityError) as error, transaction.atomic():
        deal.save()

    assert "deal_lost_has_reason" in str(error.value)
    assert deal_row(deal) == before


def test_the_database_refuses_a_postponed_deal_without_a_next_contact(deal):
    before = deal_row(deal)
    deal.status = DealStatus.POSTPONED

    with pytest.raises(IntegrityError) as error, transaction.atomic():
        deal.save()

    assert "deal_postponed_has_next_contact" in str(error.value)
    assert deal_row(deal) == before


@pytest.mark.parametrize(("status", "closed"), [(DealStatus.WON, False), (DealStatus.OPEN, True)])
def test_the_database_keeps_closed_at_for_closed_deals_only(deal, status, closed):
    before = deal_row(deal)
    deal.status = status
    deal.closed_at = timezone.now() if closed else None

    with pytest.raises(IntegrityError) as error, transaction.atomic():
        deal.save()

    assert "deal_closed_at_iff_closed" in str(error.value)
    assert deal_row(deal) == before


def test_the_database_refuses_a_negative_amount(deal):
    deal.amount = -1

    with pytest.raises(IntegrityError) as error, transaction.atomic():
        deal.save()

    assert "deal_amount_not_negative" in str(error.value)


def test_the_database_refuses_a_status_change_to_lost_without_a_reason(deal):
    counts = row_counts()

    with pytest.raises(IntegrityError) as error, transaction.atomic():
        StatusChange.objects.create(
            deal=deal, from_status=DealStatus.OPEN, to_status=DealStatus.LOST, stage=deal.stage
        )

    assert "statuschange_lost_has_reason" in str(error.value)
    assert row_counts() == counts


def test_the_database_refuses_a_stage_change_that_goes_nowhere(deal):
    counts = row_counts()

    with pytest.raises(IntegrityError) as error, transaction.atomic():
        StageChange.objects.create(deal=deal, from_stage=deal.stage, to_stage=deal.stage)

    assert "stagechange_moves" in str(error.value)
    assert row_counts() == counts


# ---------------------------------------------------------------- immutable history


@pytest.fixture
def history(manager, funnel):
    story = DealStory(funnel, owner=manager).enters("S1").moves_to("S2").lost("Spam")
    return story


def history_rows() -> tuple[list, list]:
    return list(StageChange.objects.values()), list(StatusChange.objects.values())


@pytest.mark.parametrize("model", [StageChange, StatusChange])
def test_a_history_row_cannot_be_saved_again(history, model):
    before = history_rows()
    row = model.objects.filter(deal=history.deal).last()
    row.at += datetime.timedelta(days=1)

    with pytest.raises(RuntimeError) as error:
        row.save()

    assert str(error.value) == f"{model.__name__} rows are immutable history."
    assert history_rows() == before


@pytest.mark.parametrize("model", [StageChange, StatusChange])
def test_a_history_row_cannot_be_deleted(history, model):
    before = history_rows()

    with pytest.raises(RuntimeError) as error:
        model.objects.filter(deal=history.deal).last().delete()

    assert str(error.value) == f"{model.__name__} rows are immutable history."
    assert history_rows() == before


@pytest.mark.postgres_only
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE deals_stagechange SET at = at + interval '1 day'",
        "DELETE FROM deals_stagechange",
        "UPDATE deals_statuschange SET comment = 'rewritten'",
        "DELETE FROM deals_statuschange",
    ],
)
def test_postgresql_refuses_to_rewrite_history_even_in_raw_sql(history, sql):
    before = history_rows()

    with pytest.raises(DatabaseError) as error, transaction.atomic(), connection.cursor() as cur:
        cur.execute(sql)

    assert "is append-only: rows are never changed or deleted" in str(error.value)
    assert history_rows() == before
