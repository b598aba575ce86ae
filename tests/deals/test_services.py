import datetime
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from crm.errors import Conflict, Forbidden, InvalidInput
from deals.models import Contact, Deal, DealStatus, Note, StageChange, StatusChange, Task
from deals.services import (
    DealOpener,
    deal_assign,
    deal_create,
    deal_lose,
    deal_move_to_stage,
    deal_postpone,
    deal_reopen,
    deal_resume_postponed,
    deal_update,
    deal_win,
    deals_resume_due_postponed,
    note_add,
    task_complete,
    task_create,
)
from funnels.services import loss_reason_set_active, stage_update
from tests.factories import FunnelFactory, UserFactory
from tests.story import START, DealStory, nothing_changes

pytestmark = pytest.mark.django_db

AT = START
MINUTE = datetime.timedelta(minutes=1)
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)

NOT_YOURS = "You cannot change this deal: it belongs to another manager."
STALE = "Someone changed this deal while you were looking at it. Reload it and try again."


def stage_changes(deal) -> list[tuple]:
    return list(
        StageChange.objects.filter(deal=deal).values_list("from_stage", "to_stage", "at", "actor")
    )


def status_changes(deal) -> list[tuple]:
    return list(
        StatusChange.objects.filter(deal=deal).values_list(
            "from_status",
            "to_status",
            "stage",
            "at",
            "actor",
            "loss_reason",
            "comment",
            "next_contact_at",
        )
    )


def tasks(deal) -> list[tuple]:
    return list(
        Task.objects.filter(deal=deal).values_list("title", "assignee", "due_at", "done_at")
    )


def reload(deal) -> Deal:
    return Deal.objects.get(pk=deal.pk)


# ---------------------------------------------------------------- deal_create


def test_deal_create_opens_the_deal_at_the_first_stage(manager, strict, strict_stages):
    s1 = strict_stages["S1"]

    deal = deal_create(
        actor=manager,
        funnel=strict,
        title="  Office chairs ",
        owner=manager,
        values={"amount": "150 000,50", "temperature": "warm", "region": " Moscow "},
        at=AT,
    )

    deal = reload(deal)
    assert (
        deal.funnel,
        deal.stage,
        deal.status,
        deal.title,
        deal.amount,
        deal.temperature,
        deal.region,
        deal.owner,
        deal.version,
    ) == (strict, s1, "open", "Office chairs", Decimal("150000.50"), "warm", "Moscow", manager, 1)
    assert (deal.created_at, deal.stage_entered_at, deal.closed_at) == (AT, AT, None)
    assert stage_changes(deal) == [(None, s1.pk, AT, manager.pk)]
    assert status_changes(deal) == []
    assert tasks(deal) == [("Call the lead", manager.pk, AT + 2 * MINUTE, None)]


def test_deal_create_at_a_later_stage_needs_the_fields_of_every_stage_up_to_it(
    manager, strict, strict_stages, all_required
):
    s3 = strict_stages["S3"]

    with nothing_changes(), pytest.raises(InvalidInput) as error:
        deal_create(actor=manager, funnel=strict, title="Chairs", stage=s3, owner=manager, at=AT)

    assert error.value.message == (
        "To open the deal at “S3”, fill in: Amount, Budget, Client phone, Source."
    )
    assert error.value.fields == {
        "amount": "Required by the stage “S2”.",
        "budget": "Required by the stage “S2”.",
        "contact_phone": "Required by the stage “S3”.",
        "source": "Required by the stage “S3”.",
    }

    deal = deal_create(
        actor=manager,
        funnel=strict,
        title="Chairs",
        stage=s3,
        owner=manager,
        values=all_required,
        at=AT,
    )

    deal = reload(deal)
    assert (deal.stage, deal.amount, deal.custom_fields, deal.source) == (
        s3,
        Decimal("1000.00"),
        {"budget": "5000"},
        "site",
    )
    assert (deal.contact.name, deal.contact.phone) == ("Ivan", "+7 900 123 45 67")
    assert stage_changes(deal) == [(None, s3.pk, AT, manager.pk)]
    # Only the entry stage's tasks: S1 was never entered.
    assert tasks(deal) == [
        ("Send the offer", manager.pk, AT + 60 * MINUTE, None),
        ("Agree a meeting", manager.pk, AT + DAY, None),
    ]


@pytest.mark.parametrize("phone", ["+7 900 123 45 67", "79001234567", "900 123-45-67"])
def test_deal_create_finds_the_client_by_normalised_phone(funnel, phone):
    first = deal_create(
        actor=None,
        funnel=funnel,
        title="First",
        values={"contact_name": "Ivan", "contact_phone": "8 (900) 123-45-67"},
    )

    second = deal_create(
        actor=None,
        funnel=funnel,
        title="Second",
        values={
            "contact_name": "Ivan Petrov",
            "contact_phone": phone,
            "contact_email": "ivan@example.com",
        },
    )

    assert second.contact_id == first.contact_id
    assert list(
        Contact.objects.values_list(
            "name", "phone", "phone_normalized", "email", "email_normalized"
        )
    ) == [("Ivan", "8 (900) 123-45-67", "79001234567", "ivan@example.com", "ivan@example.com")]


def test_deal_create_finds_the_client_by_email_whatever_its_case(funnel):
    first = deal_create(
        actor=None, funnel=funnel, title="First", values={"contact_email": "Ivan@Example.COM"}
    )

    second = deal_create(
        actor=None,
        funnel=funnel,
        title="Second",
        values={"contact_email": " ivan@example.com ", "company": "Horns and Hooves"},
    )

    assert second.contact_id == first.contact_id
    assert list(Contact.objects.values_list("name", "email", "email_normalized", "company")) == [
        ("Ivan@Example.COM", "Ivan@Example.COM", "ivan@example.com", "Horns and Hooves")
    ]


def test_deal_create_keeps_different_clients_apart(funnel):
    first = deal_create(
        actor=None, funnel=funnel, title="A", values={"contact_phone": "+7 900 123 45 67"}
    )
    second = deal_create(
        actor=None, funnel=funnel, title="B", values={"contact_phone": "+7 900 123 45 68"}
    )

    assert first.contact_id != second.contact_id
    assert Contact.objects.count() == 2


def test_deal_create_refuses_invalid_client_details(funnel):
    with nothing_changes(), pytest.raises(InvalidInput) as error:
        deal_create(
            actor=None,
            funnel=funnel,
            title="A",
            values={"contact_email": "ivan@", "contact_phone": "12-34"},
        )

    assert error.value.fields == {
        "contact_email": "“ivan@” is not an email address.",
        "contact_phone": "“12-34” is not a phone number.",
    }


def test_a_manager_creates_deals_for_himself_or_unassigned_in_his_funnels(manager, funnel):
    mine = deal_create(actor=manager, funnel=funnel, title="Mine", owner=manager)
    lead = deal_create(actor=manager, funnel=funnel, title="Lead")

    assert (mine.owner, lead.owner) == (manager, None)


def test_a_manager_cannot_create_deals_for_another_manager(manager, other_manager, funnel):
    with nothing_changes(), pytest.raises(Forbidden) as error:
        deal_create(actor=manager, funnel=funnel, title="For Petya", owner=other_manager)

    assert error.value.message == NOT_YOURS


def test_a_manager_cannot_create_leads_in_a_funnel_he_does_not_work(manager):
    retail = FunnelFactory(name="Retail")

    with nothing_changes(), pytest.raises(Forbidden):
        deal_create(actor=manager, funnel=retail, title="Lead")


def test_deal_create_refuses_a_deactivated_owner(other_manager, funnel):
    other_manager.is_active = False
    other_manager.save()

    with nothing_changes(), pytest.raises(InvalidInput) as error:
        deal_create(actor=None, funnel=funnel, title="A", owner=other_manager)

    assert error.value.message == "Petya is deactivated and cannot own deals."
    assert error.value.fields == {"owner": "Choose an active user."}


def test_deal_create_refuses_a_stage_of_another_funnel_and_an_archived_funnel(funnel):
    retail = FunnelFactory(name="Retail")

    with nothing_changes(), pytest.raises(InvalidInput) as error:
        deal_create(actor=None, funnel=funnel, title="A", stage=retail.first_stage())
    assert error.value.message == "The stage “S1” is not in the funnel “B2B”."

    funnel.is_active = False
    funnel.save()
    with nothing_changes(), pytest.raises(InvalidInput) as error:
        deal_create(actor=None, funnel=funnel, title="A")
    assert error.value.message == "The funnel “B2B” is archived."


# ---------------------------------------------------------------- deal_move_to_stage


def test_a_deal_moves_forward_backward_and_skipping(manager, funnel, stages):
    story = DealStory(funnel, owner=manager, actor=manager).enters("S1")

    story.moves_to("S3").moves_to("S2").moves_to("S4")

    assert story.stage_path() == [(None, "S1"), ("S1", "S3"), ("S3", "S2"), ("S2", "S4")]
    deal = reload(story.deal)
    assert (deal.stage, deal.status, deal.version, deal.stage_entered_at) == (
        stages["S4"],
        "open",
        4,
        AT + 3 * HOUR,
    )
    assert stage_changes(deal)[-1] == (stages["S2"].pk, stages["S4"].pk, AT + 3 * HOUR, manager.pk)


def test_a_move_gives_the_entered_stage_tasks_to_the_owner(
    manager, strict, strict_stages, all_required
):
    deal = deal_create(actor=manager, funnel=strict, title="A", owner=manager, at=AT)

    deal_move_to_stage(
        actor=manager, deal=deal, stage=strict_stages["S3"], values=all_required, at=AT + HOUR
    )

    assert tasks(deal) == [
        ("Call the lead", manager.pk, AT + 2 * MINUTE, None),
        ("Send the offer", manager.pk, AT + 2 * HOUR, None),
        ("Agree a meeting", manager.pk, AT + HOUR + DAY, None),
    ]


def test_skipping_over_stages_with_missing_fields_is_refused_naming_every_field(
    manager, strict, strict_stages
):
    deal = deal_create(actor=manager, funnel=strict, title="A", owner=manager, at=AT)

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_move_to_stage(actor=manager, deal=deal, stage=strict_stages["S4"])

    assert error.value.message == (
        "To move to “S4”, fill in: Amount, Budget, Client phone, Source."
    )
    assert error.value.fields == {
        "amount": "Required by the stage “S2”.",
        "budget": "Required by the stage “S2”.",
        "contact_phone": "Required by the stage “S3”.",
        "source": "Required by the stage “S3”.",
    }


def test_a_partly_filled_move_saves_none_of_its_values(manager, strict, strict_stages):
    deal = deal_create(actor=manager, funnel=strict, title="A", owner=manager, at=AT)

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_move_to_stage(
            actor=manager,
            deal=deal,
            stage=strict_stages["S4"],
            values={"amount": "1000", "contact_name": "Ivan", "contact_phone": "89001234567"},
        )

    assert error.value.fields == {
        "budget": "Required by the stage “S2”.",
        "source": "Required by the stage “S3”.",
    }


def test_a_move_fills_the_required_values_in_the_same_call(
    manager, strict, strict_stages, all_required
):
    deal = deal_create(actor=manager, funnel=strict, title="A", owner=manager, at=AT)

    deal_move_to_stage(
        actor=manager, deal=deal, stage=strict_stages["S4"], values=all_required, at=AT + HOUR
    )

    deal = reload(deal)
    assert (deal.stage, deal.amount, deal.custom_fields, deal.source, deal.version) == (
        strict_stages["S4"],
        Decimal("1000.00"),
        {"budget": "5000"},
        "site",
        2,
    )
    assert (deal.contact.name, deal.contact.phone_normalized) == ("Ivan", "79001234567")
    assert stage_changes(deal) == [
        (None, strict_stages["S1"].pk, AT, manager.pk),
        (strict_stages["S1"].pk, strict_stages["S4"].pk, AT + HOUR, manager.pk),
    ]


def test_a_move_back_needs_only_the_fields_of_the_stages_up_to_the_target(
    head, manager, strict, strict_stages, all_required
):
    story = DealStory(strict, owner=manager, actor=manager).enters("S1")
    story.moves_to("S4", **all_required)
    stage_update(actor=head, stage=strict_stages["S3"], required_fields=["region"])

    story.moves_to("S2")

    with nothing_changes(story.deal), pytest.raises(InvalidInput) as error:
        deal_move_to_stage(actor=manager, deal=story.deal, stage=strict_stages["S3"])
    assert error.value.fields == {"region": "Required by the stage “S3”."}
    assert story.stage_path() == [(None, "S1"), ("S1", "S4"), ("S4", "S2")]


@pytest.mark.parametrize("close", ["won", "lost"])
def test_a_closed_deal_cannot_move(manager, funnel, stages, close):
    story = DealStory(funnel, owner=manager).enters("S1")
    story.won() if close == "won" else story.lost("Spam")

    with nothing_changes(story.deal), pytest.raises(InvalidInput) as error:
        deal_move_to_stage(actor=manager, deal=story.deal, stage=stages["S2"])

    assert error.value.message == f"The deal is {close}. Reopen it before moving it."


def test_a_deal_cannot_move_to_a_stage_of_another_funnel(manager, funnel):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)
    retail = FunnelFactory(name="Retail", stages=["Call"])

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_move_to_stage(actor=manager, deal=deal, stage=retail.first_stage())

    assert error.value.message == "The stage “Call” is not in this deal's funnel."
    assert error.value.fields == {"stage": "Choose a stage of the deal's funnel."}


def test_a_deal_cannot_move_to_the_stage_it_is_on(manager, funnel, stages):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_move_to_stage(actor=manager, deal=deal, stage=stages["S1"])

    assert error.value.message == "The deal is already at “S1”."


def test_a_stale_version_is_a_conflict_and_the_version_grows_with_each_move(
    manager, funnel, stages
):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)
    deal = deal_move_to_stage(actor=manager, deal=deal, stage=stages["S2"], expected_version=1)
    assert reload(deal).version == 2

    with nothing_changes(deal), pytest.raises(Conflict) as error:
        deal_move_to_stage(actor=manager, deal=deal, stage=stages["S3"], expected_version=1)
    assert error.value.message == STALE
    assert (error.value.code, error.value.http_status) == ("conflict", 409)

    deal_move_to_stage(actor=manager, deal=deal, stage=stages["S3"], expected_version=2)
    assert (reload(deal).version, reload(deal).stage) == (3, stages["S3"])


def test_the_story_s1_s3_s2_won(manager, funnel, stages):
    story = DealStory(funnel, owner=manager, actor=manager)

    story.enters("S1").moves_to("S3").moves_to("S2").won()

    assert story.stage_path() == [(None, "S1"), ("S1", "S3"), ("S3", "S2")]
    assert status_changes(story.deal) == [
        ("open", "won", stages["S2"].pk, AT + 3 * HOUR, manager.pk, None, "", None)
    ]
    deal = reload(story.deal)
    assert (deal.status, deal.stage, deal.closed_at, deal.version) == (
        "won",
        stages["S2"],
        AT + 3 * HOUR,
        4,
    )


# ---------------------------------------------------------------- deal_win


def test_winning_needs_the_required_fields_of_every_stage(manager, strict, all_required):
    deal = deal_create(actor=manager, funnel=strict, title="A", owner=manager, at=AT)

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_win(actor=manager, deal=deal)
    assert error.value.message == "To win the deal, fill in: Amount, Budget, Client phone, Source."
    assert list(error.value.fields) == ["amount", "budget", "contact_phone", "source"]

    deal_win(actor=manager, deal=deal, values=all_required, at=AT + HOUR)

    deal = reload(deal)
    assert (deal.status, deal.closed_at, deal.amount, deal.version) == (
        "won",
        AT + HOUR,
        Decimal("1000.00"),
        2,
    )


def test_a_postponed_deal_can_be_won_and_forgets_its_next_contact(manager, funnel, stages):
    story = DealStory(funnel, owner=manager).enters("S1").postponed_for(DAY)

    story.won()

    deal = reload(story.deal)
    assert (deal.status, deal.next_contact_at, deal.closed_at) == ("won", None, AT + 2 * HOUR)
    assert story.status_path() == [("open", "postponed", "S1"), ("postponed", "won", "S1")]


@pytest.mark.parametrize(
    ("close", "message"),
    [
        ("won", "The deal is already won; reopen it to win it."),
        ("lost", "The deal is already lost; reopen it to win it."),
    ],
)
def test_a_closed_deal_cannot_be_won(manager, funnel, close, message):
    story = DealStory(funnel, owner=manager).enters("S1")
    story.won() if close == "won" else story.lost("Spam")

    with nothing_changes(story.deal), pytest.raises(InvalidInput) as error:
        deal_win(actor=manager, deal=story.deal)

    assert error.value.message == message


# ---------------------------------------------------------------- deal_lose


@pytest.mark.parametrize("missing", [None, ""])
def test_a_deal_is_lost_only_with_a_reason(manager, funnel, missing):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_lose(actor=manager, deal=deal, loss_reason=missing, comment="Gone")

    assert error.value.message == "A deal is closed as lost only with its reason: choose one."
    assert error.value.fields == {"loss_reason": "Choose a loss reason."}


@pytest.mark.parametrize("by_id", [False, True])
def test_deal_lose_closes_with_the_reason(manager, funnel, stages, by_id):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager, at=AT)
    competitor = funnel.loss_reasons.get(name="Bought from a competitor")

    deal_lose(
        actor=manager,
        deal=deal,
        loss_reason=competitor.pk if by_id else competitor,
        comment=" Cheaper at Horns and Hooves ",
        at=AT + HOUR,
    )

    deal = reload(deal)
    assert (deal.status, deal.loss_reason, deal.loss_comment, deal.closed_at, deal.version) == (
        "lost",
        competitor,
        "Cheaper at Horns and Hooves",
        AT + HOUR,
        2,
    )
    assert status_changes(deal) == [
        (
            "open",
            "lost",
            stages["S1"].pk,
            AT + HOUR,
            manager.pk,
            competitor.pk,
            "Cheaper at Horns and Hooves",
            None,
        )
    ]


@pytest.mark.parametrize("which", ["retired", "another funnel's", "unknown"])
def test_deal_lose_refuses_a_reason_the_funnel_does_not_offer(head, manager, funnel, which):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)
    if which == "retired":
        reason = funnel.loss_reasons.get(name="Spam")
        loss_reason_set_active(actor=head, reason=reason, is_active=False)
    elif which == "another funnel's":
        reason = FunnelFactory(name="Retail").loss_reasons.get(name="Spam")
    else:
        reason = 987654

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_lose(actor=manager, deal=deal, loss_reason=reason)

    assert error.value.message == "Choose one of the funnel's current loss reasons."
    assert error.value.fields == {"loss_reason": "This reason is not available for this funnel."}


@pytest.mark.parametrize("comment", ["", "   "])
def test_other_needs_a_comment(manager, funnel, comment):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)
    other = funnel.loss_reasons.get(name="Other")

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_lose(actor=manager, deal=deal, loss_reason=other, comment=comment)

    assert error.value.message == "The reason “Other” needs a comment: say what happened."
    assert error.value.fields == {"loss_comment": "Write a comment."}

    deal_lose(actor=manager, deal=deal, loss_reason=other, comment="Moved abroad")
    assert (reload(deal).loss_reason, reload(deal).loss_comment) == (other, "Moved abroad")


def test_a_retired_reason_stays_on_deals_lost_with_it(head, manager, funnel):
    story = DealStory(funnel, owner=manager).enters("S1").lost("Spam")
    spam = funnel.loss_reasons.get(name="Spam")

    loss_reason_set_active(actor=head, reason=spam, is_active=False)

    assert reload(story.deal).loss_reason == spam


def test_a_postponed_deal_can_be_lost_and_forgets_its_next_contact(manager, funnel):
    story = DealStory(funnel, owner=manager).enters("S1").postponed_for(DAY)

    story.lost("Changed their mind")

    deal = reload(story.deal)
    assert (deal.status, deal.next_contact_at, deal.loss_reason.name) == (
        "lost",
        None,
        "Changed their mind",
    )


def test_a_won_deal_cannot_be_lost(manager, funnel):
    story = DealStory(funnel, owner=manager).enters("S1").won()

    with nothing_changes(story.deal), pytest.raises(InvalidInput) as error:
        deal_lose(actor=manager, deal=story.deal, loss_reason=funnel.loss_reasons.first())

    assert error.value.message == "The deal is already won; reopen it to lose it."


# ---------------------------------------------------------------- deal_postpone


def test_deal_postpone_puts_the_deal_on_hold(manager, funnel, stages):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager, at=AT)

    deal_postpone(
        actor=manager,
        deal=deal,
        next_contact_at=AT + 7 * DAY,
        comment=" After the holidays ",
        at=AT + HOUR,
    )

    deal = reload(deal)
    assert (deal.status, deal.next_contact_at, deal.closed_at, deal.version) == (
        "postponed",
        AT + 7 * DAY,
        None,
        2,
    )
    assert status_changes(deal) == [
        (
            "open",
            "postponed",
            stages["S1"].pk,
            AT + HOUR,
            manager.pk,
            None,
            "After the holidays",
            AT + 7 * DAY,
        )
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-03-10T12:00:00+03:00", datetime.datetime(2025, 3, 10, 9, 0, tzinfo=datetime.UTC)),
        # A naive time is read in the project's time zone (Europe/Moscow, UTC+3).
        ("2025-03-10T12:00", datetime.datetime(2025, 3, 10, 9, 0, tzinfo=datetime.UTC)),
    ],
)
def test_deal_postpone_reads_an_iso_date(settings, manager, funnel, raw, expected):
    settings.TIME_ZONE = "Europe/Moscow"
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager, at=AT)

    deal_postpone(actor=manager, deal=deal, next_contact_at=raw, at=AT)

    assert reload(deal).next_contact_at == expected


def test_postponing_a_postponed_deal_only_moves_the_date(manager, funnel):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager, at=AT)
    deal_postpone(actor=manager, deal=deal, next_contact_at=AT + DAY, at=AT)

    deal_postpone(actor=manager, deal=deal, next_contact_at=AT + 3 * DAY, at=AT + HOUR)

    deal = reload(deal)
    assert (deal.status, deal.next_contact_at, deal.version) == ("postponed", AT + 3 * DAY, 3)
    assert [row[:2] for row in status_changes(deal)] == [("open", "postponed")]


@pytest.mark.parametrize(
    ("when", "fields"),
    [
        (AT, {"next_contact_at": "Choose a later date."}),
        (AT - MINUTE, {"next_contact_at": "Choose a later date."}),
        (None, {"next_contact_at": "Choose when to contact the client."}),
        ("next week", {"next_contact_at": "“next week” is not a date and time."}),
    ],
)
def test_deal_postpone_needs_a_future_date(manager, funnel, when, fields):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager, at=AT)

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_postpone(actor=manager, deal=deal, next_contact_at=when, at=AT)

    assert error.value.fields == fields


def test_a_closed_deal_cannot_be_postponed(manager, funnel):
    story = DealStory(funnel, owner=manager).enters("S1").lost("Spam")

    with nothing_changes(story.deal), pytest.raises(InvalidInput) as error:
        deal_postpone(actor=manager, deal=story.deal, next_contact_at=timezone.now() + DAY)

    assert error.value.message == "The deal is already lost; reopen it to postpone it."


# ---------------------------------------------------------------- deal_reopen


def test_reopening_a_lost_deal_clears_the_loss(manager, funnel, stages):
    story = DealStory(funnel, owner=manager).enters("S1").moves_to("S2")
    story.lost("Other", comment="Moved abroad")

    deal_reopen(actor=manager, deal=story.deal, comment=" Came back ", at=AT + 3 * HOUR)

    deal = reload(story.deal)
    assert (
        deal.status,
        deal.stage,
        deal.loss_reason,
        deal.loss_comment,
        deal.closed_at,
        deal.version,
    ) == ("open", stages["S2"], None, "", None, 4)
    assert status_changes(deal)[-1] == (
        "lost",
        "open",
        stages["S2"].pk,
        AT + 3 * HOUR,
        manager.pk,
        None,
        "Came back",
        None,
    )


def test_reopening_a_won_or_postponed_deal(manager, funnel):
    won = DealStory(funnel, owner=manager).enters("S1").won().reopened()
    postponed = DealStory(funnel, owner=manager).enters("S1").postponed_for(DAY).reopened()

    assert [
        (deal.status, deal.closed_at, deal.next_contact_at)
        for deal in (reload(won.deal), reload(postponed.deal))
    ] == [("open", None, None), ("open", None, None)]
    assert won.status_path() == [("open", "won", "S1"), ("won", "open", "S1")]
    assert postponed.status_path() == [("open", "postponed", "S1"), ("postponed", "open", "S1")]


def test_an_open_deal_cannot_be_reopened(manager, funnel):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_reopen(actor=manager, deal=deal)

    assert error.value.message == "The deal is already open."


# ---------------------------------------------------------------- deal_assign


def test_open_tasks_follow_the_deal_to_its_new_owner(head, manager, other_manager, strict):
    deal = deal_create(actor=manager, funnel=strict, title="A", owner=manager, at=AT)
    done = task_create(actor=manager, deal=deal, title="Done already", due_at=AT + HOUR)
    task_complete(actor=manager, task=done, at=AT + MINUTE)
    task_create(actor=manager, deal=deal, title="Head's call", due_at=AT + DAY, assignee=head)

    deal_assign(actor=head, deal=deal, owner=other_manager)

    deal = reload(deal)
    assert (deal.owner, deal.version) == (other_manager, 2)
    assert tasks(deal) == [
        ("Call the lead", other_manager.pk, AT + 2 * MINUTE, None),
        ("Done already", manager.pk, AT + HOUR, AT + MINUTE),
        ("Head's call", head.pk, AT + DAY, None),
    ]


def test_unassigning_leaves_open_tasks_unassigned(head, manager, strict):
    deal = deal_create(actor=manager, funnel=strict, title="A", owner=manager, at=AT)

    deal_assign(actor=head, deal=deal, owner=None)

    assert (reload(deal).owner, tasks(deal)) == (
        None,
        [("Call the lead", None, AT + 2 * MINUTE, None)],
    )


def test_assigning_the_same_owner_changes_nothing(manager, funnel):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)

    with nothing_changes(deal):
        deal_assign(actor=manager, deal=deal, owner=manager)


def test_deal_assign_refuses_a_deactivated_owner(head, manager, other_manager, strict):
    deal = deal_create(actor=manager, funnel=strict, title="A", owner=manager, at=AT)
    other_manager.is_active = False
    other_manager.save()

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_assign(actor=head, deal=deal, owner=other_manager)

    assert error.value.message == "Petya is deactivated and cannot own deals."
    assert error.value.fields == {"owner": "Choose an active user."}


def test_deal_assign_refuses_a_manager_who_does_not_work_the_funnel(
    head, manager, outsider, strict
):
    deal = deal_create(actor=manager, funnel=strict, title="A", owner=manager, at=AT)

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_assign(actor=head, deal=deal, owner=outsider)

    assert error.value.message == "Kolya does not work the funnel “Strict”."
    assert error.value.fields == {"owner": "Choose a member of the funnel."}


def test_a_head_or_an_admin_may_own_deals_of_any_funnel(head, sales_admin, manager, funnel):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)

    deal_assign(actor=sales_admin, deal=deal, owner=head)
    assert reload(deal).owner == head
    deal_assign(actor=sales_admin, deal=deal, owner=sales_admin)
    assert reload(deal).owner == sales_admin


def test_a_manager_takes_an_unassigned_lead_of_his_funnel(manager, funnel):
    lead = deal_create(actor=None, funnel=funnel, title="Lead")

    deal_assign(actor=manager, deal=lead, owner=manager)

    assert reload(lead).owner == manager


# ---------------------------------------------------------------- who may change what


ACTIONS = {
    "move": lambda actor, deal, funnel: deal_move_to_stage(
        actor=actor, deal=deal, stage=funnel.stages.get(name="S2")
    ),
    "win": lambda actor, deal, funnel: deal_win(actor=actor, deal=deal),
    "lose": lambda actor, deal, funnel: deal_lose(
        actor=actor, deal=deal, loss_reason=funnel.loss_reasons.get(name="Spam")
    ),
    "postpone": lambda actor, deal, funnel: deal_postpone(
        actor=actor, deal=deal, next_contact_at=timezone.now() + DAY
    ),
    "reopen": lambda actor, deal, funnel: deal_reopen(actor=actor, deal=deal),
    "note": lambda actor, deal, funnel: note_add(actor=actor, deal=deal, text="Mine now"),
    "assign": lambda actor, deal, funnel: deal_assign(actor=actor, deal=deal, owner=actor),
    "update": lambda actor, deal, funnel: deal_update(
        actor=actor, deal=deal, values={"amount": "1"}
    ),
    "task": lambda actor, deal, funnel: task_create(
        actor=actor, deal=deal, title="Call", due_at=timezone.now() + DAY
    ),
}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_a_manager_cannot_touch_another_managers_deal(manager, other_manager, funnel, action):
    deal = deal_create(actor=other_manager, funnel=funnel, title="Petya's", owner=other_manager)

    with nothing_changes(deal), pytest.raises(Forbidden) as error:
        ACTIONS[action](manager, deal, funnel)

    assert error.value.message == NOT_YOURS
    assert (error.value.code, error.value.http_status) == ("forbidden", 403)


@pytest.mark.parametrize("action", ["move", "note", "assign"])
def test_a_manager_cannot_touch_a_lead_of_a_funnel_he_does_not_work(outsider, funnel, action):
    lead = deal_create(actor=None, funnel=funnel, title="Lead")

    with nothing_changes(lead), pytest.raises(Forbidden):
        ACTIONS[action](outsider, lead, funnel)


def test_the_team_head_and_an_admin_may_change_a_managers_deal(
    head, sales_admin, manager, funnel, stages
):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)

    deal_move_to_stage(actor=head, deal=deal, stage=stages["S2"])
    deal_move_to_stage(actor=sales_admin, deal=deal, stage=stages["S3"])

    assert list(StageChange.objects.filter(deal=deal).values_list("actor", "to_stage__name")) == [
        (manager.pk, "S1"),
        (head.pk, "S2"),
        (sales_admin.pk, "S3"),
    ]


def test_the_head_of_another_team_cannot_change_the_deal(manager, funnel, stages):
    stranger_head = UserFactory(username="other_head", role="head")
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)

    with nothing_changes(deal), pytest.raises(Forbidden):
        deal_move_to_stage(actor=stranger_head, deal=deal, stage=stages["S2"])


# ---------------------------------------------------------------- deal_update, tasks and notes


def test_deal_update_saves_changed_fields_and_bumps_the_version(manager, funnel):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)

    deal_update(
        actor=manager,
        deal=deal,
        values={"title": "Chairs", "amount": "99.999", "expected_close_date": "2025-05-01"},
        expected_version=1,
    )

    deal = reload(deal)
    assert (deal.title, deal.amount, deal.expected_close_date, deal.version) == (
        "Chairs",
        Decimal("100.00"),
        datetime.date(2025, 5, 1),
        2,
    )


@pytest.mark.parametrize(
    ("values", "fields"),
    [
        ({"stage": 1, "status": "won"}, {"stage": "No such field.", "status": "No such field."}),
        ({"amount": "-5"}, {"amount": "Enter an amount from 0 to 999 999 999 999."}),
        ({"amount": "lots"}, {"amount": "“lots” is not a number."}),
        ({"title": " "}, {"title": "Enter a title."}),
        ({"temperature": "hot"}, {"temperature": "Choose warm or cold."}),
        (
            {"custom_fields": {"colour": "red"}},
            {"colour": "The funnel has no custom field “colour”."},
        ),
    ],
)
def test_deal_update_refuses_bad_values(manager, funnel, values, fields):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)

    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        deal_update(actor=manager, deal=deal, values=values)

    assert error.value.fields == fields


def test_note_add_keeps_the_author_and_refuses_empty_notes(manager, funnel):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager)

    note_add(actor=manager, deal=deal, text="  Called, no answer ", at=AT)

    assert list(Note.objects.values_list("deal", "author", "text", "created_at")) == [
        (deal.pk, manager.pk, "Called, no answer", AT)
    ]
    with nothing_changes(deal), pytest.raises(InvalidInput) as error:
        note_add(actor=manager, deal=deal, text="   ")
    assert error.value.fields == {"text": "Write something."}


def test_only_the_assignee_or_someone_who_may_change_the_deal_completes_a_task(
    manager, other_manager, funnel
):
    deal = deal_create(actor=other_manager, funnel=funnel, title="A", owner=other_manager)
    theirs = task_create(actor=other_manager, deal=deal, title="Call", due_at=AT)
    mine = task_create(actor=other_manager, deal=deal, title="Help", due_at=AT, assignee=manager)

    with pytest.raises(Forbidden):
        task_complete(actor=manager, task=theirs)
    task_complete(actor=manager, task=mine, at=AT + HOUR)

    assert list(Task.objects.values_list("title", "done_at")) == [
        ("Call", None),
        ("Help", AT + HOUR),
    ]


# ---------------------------------------------------------------- postponed deals come back


def test_due_postponed_deals_return_to_open_with_a_task(manager, funnel, stages):
    due = deal_create(actor=manager, funnel=funnel, title="Due", owner=manager, at=AT)
    deal_postpone(actor=manager, deal=due, next_contact_at=AT + DAY, at=AT)
    later = deal_create(actor=manager, funnel=funnel, title="Later", owner=manager, at=AT)
    deal_postpone(actor=manager, deal=later, next_contact_at=AT + 3 * DAY, at=AT)
    deal_create(actor=manager, funnel=funnel, title="Open", owner=manager, at=AT)

    assert deals_resume_due_postponed(at=AT + 2 * DAY) == 1

    assert (reload(due).status, reload(due).next_contact_at, reload(due).version) == (
        "open",
        None,
        3,
    )
    assert status_changes(due)[-1] == (
        "postponed",
        "open",
        stages["S1"].pk,
        AT + 2 * DAY,
        None,
        None,
        "The postponed date has come.",
        None,
    )
    assert list(
        Task.objects.filter(deal=due).values_list("title", "assignee", "due_at", "created_at")
    ) == [("Contact the client: the postponed deal is due", manager.pk, AT + DAY, AT + 2 * DAY)]
    assert (reload(later).status, reload(later).next_contact_at) == ("postponed", AT + 3 * DAY)

    with nothing_changes(due, later):
        assert deals_resume_due_postponed(at=AT + 2 * DAY) == 0


def test_a_deal_is_due_at_its_exact_next_contact_time(manager, funnel):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager, at=AT)
    deal_postpone(actor=manager, deal=deal, next_contact_at=AT + DAY, at=AT)

    assert deals_resume_due_postponed(at=AT + DAY - MINUTE) == 0
    assert deals_resume_due_postponed(at=AT + DAY) == 1
    assert reload(deal).status == DealStatus.OPEN


def test_resuming_a_deal_that_was_reopened_meanwhile_does_nothing(manager, funnel):
    deal = deal_create(actor=manager, funnel=funnel, title="A", owner=manager, at=AT)
    deal_postpone(actor=manager, deal=deal, next_contact_at=AT + DAY, at=AT)
    deal_reopen(actor=manager, deal=deal, at=AT + HOUR)

    with nothing_changes(deal):
        assert deal_resume_postponed(deal=deal, at=AT + 2 * DAY) is False


@pytest.mark.django_db
def test_a_second_deal_with_the_same_external_id_is_a_conflict(funnel):
    from crm.errors import Conflict
    from deals.services import deal_create

    deal_create(actor=None, funnel=funnel, title="First", external_id="crm-1")
    with pytest.raises(Conflict) as error:
        deal_create(actor=None, funnel=funnel, title="Again", external_id="crm-1")
    assert error.value.message == "The funnel already has a deal with the external id “crm-1”."
    assert funnel.deals.filter(external_id="crm-1").count() == 1


@pytest.mark.parametrize("size", [1, 12])  # 12: the COPY path on PostgreSQL
def test_opening_deals_with_an_external_id_taken_meanwhile_is_a_conflict(funnel, size):
    opener = DealOpener(funnel)
    deals = [
        opener.prepare(
            actor=None, title=f"T{n}", values={"contact_name": f"C{n}"}, external_id=f"e-{n}"
        )
        for n in range(size)
    ]
    deal_create(actor=None, funnel=funnel, title="Imported", external_id="e-0")  # another door

    with pytest.raises(Conflict) as caught, transaction.atomic():
        opener.save(deals)

    assert caught.value.fields == {"external_id": "Use another id, or update the existing deal."}
    assert list(Deal.objects.values_list("title", flat=True)) == ["Imported"]
