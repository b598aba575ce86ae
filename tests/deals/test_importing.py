"""``manage.py import_deals``: what lands in the database, what is refused, and that a
second run changes nothing. Every CSV is written to ``tmp_path``; the command is
called through ``call_command`` as an administrator would run it."""

import csv
import datetime
import io
import random
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Role, User
from analytics.engine import funnel_report
from analytics.models import StageReach, StageTime
from analytics.types import FunnelQuery
from deals.models import Contact, Deal, DealStatus, StageChange, StatusChange
from deals.services import contact_find_or_create
from funnels.models import Funnel, LossReason
from tests.factories import FunnelFactory, UserFactory
from tests.story import row_counts

pytestmark = pytest.mark.django_db

STAGES = "New;Qualified;Offer;Invoice"
DATES = "YYYY-MM-DD [HH:MM[:SS]] or DD.MM.YYYY [HH:MM[:SS]]"
REFUSED = "The import was refused and nothing was written: {} errors to fix."

# Six deals that between them use every column and every way a deal can end.
STORY_DEALS = """\
    external_id,title,owner,created_at,status,stage,amount,source,temperature,client,loss_reason,closed_at,next_contact_at
    1,Boiler,masha,2025-03-03 09:00,open,,"1 234,50",site,Warm,Ivan Petrov <+7 (900) 123-45-67>,,,
    2,,Petya,03.03.2025 10:00,открыта,,,,,ivan@example.com,,,
    3,Pump,,2025-03-03,won,Invoice,1000.5,,cold,8 900 123 45 67,,2025-03-10 12:00,
    4,Tank,masha,2025-03-04 09:00,LOST,,,,,,Too expensive,,
    5,Valve,petya,2025-03-04 10:00,won,offer,,,,+79001234567,,,
    6,Pipe,masha,2025-03-05 09:00,postponed,,,,,,,,2025-04-01 10:00
"""
# Out of order on purpose: rows of one deal are sorted by ``at``.
STORY_EVENTS = """\
    external_id,at,stage
    2,2025-03-03 10:00,New
    2,2025-03-04 10:00,Offer
    2,2025-03-05 10:00,offer
    2,2025-03-06 10:00,Qualified
    3,2025-03-03 12:00,New
    3,2025-03-05 12:00,Qualified
    3,2025-03-07 12:00,Invoice
    4,2025-03-05 09:00,Qualified
    4,2025-03-04 09:00,New
"""


def local(*args) -> datetime.datetime:
    """A moment in the installation's time zone, as naive dates in the files are read."""
    return datetime.datetime(*args, tzinfo=timezone.get_current_timezone())


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def run(tmp_path, deals: str, events: str | None = None, **options) -> str:
    """Import ``deals`` (and ``events``) into the funnel “Import”; return what it printed."""
    files = [write(tmp_path / "deals.csv", deals)]
    if events is not None:
        files.append(write(tmp_path / "events.csv", events))
    out = io.StringIO()
    call_command("import_deals", *files, stdout=out, **{"funnel": "Import", **options})
    return out.getvalue()


def refused(tmp_path, deals: str, events: str | None = None, **options) -> str:
    """Run an import that must fail; assert it wrote nothing; return the error."""
    counts = all_counts()
    with pytest.raises(CommandError) as failure:
        run(tmp_path, deals, events, **options)
    assert all_counts() == counts
    return str(failure.value)


def all_counts() -> dict[str, int]:
    return {
        **row_counts(),
        **{
            model.__name__: model.objects.count()
            for model in (Funnel, LossReason, User, StageReach, StageTime)
        },
    }


def story(tmp_path, **options) -> str:
    return run(tmp_path, STORY_DEALS, STORY_EVENTS, stages=STAGES, **options)


def deal(external_id: str) -> Deal:
    return Deal.objects.select_related("stage", "owner", "contact", "loss_reason").get(
        external_id=external_id
    )


def stage_path(external_id: str) -> list[tuple]:
    return [
        (change.from_stage.name if change.from_stage else None, change.to_stage.name, change.at)
        for change in StageChange.objects.filter(deal__external_id=external_id).select_related(
            "from_stage", "to_stage"
        )
    ]


def status_path(external_id: str) -> list[tuple]:
    return [
        (
            change.from_status,
            change.to_status,
            change.stage.name,
            change.at,
            change.loss_reason.name if change.loss_reason else None,
            change.comment,
            change.next_contact_at,
        )
        for change in StatusChange.objects.filter(deal__external_id=external_id).select_related(
            "stage", "loss_reason"
        )
    ]


# ---------------------------------------------------------------- what lands


def test_imports_the_deals_as_the_files_say(tmp_path, manager, other_manager):
    out = story(tmp_path)

    assert out == (
        "Created the funnel “Import”.\n"
        "Added loss reasons: Too expensive\n"
        "Import: 6 created, 0 already imported (2 new clients).\n"
    )
    rows = {
        d.external_id: (
            d.title,
            d.owner.username if d.owner else None,
            d.stage.name,
            d.status,
            d.amount,
            d.source,
            d.temperature,
            d.contact.name if d.contact else None,
            d.created_at,
            d.stage_entered_at,
            d.closed_at,
            d.next_contact_at,
        )
        for d in Deal.objects.select_related("owner", "stage", "contact")
    }
    assert rows == {
        "1": (
            "Boiler",
            "masha",
            "New",
            "open",
            Decimal("1234.50"),
            "site",
            "warm",
            "Ivan Petrov",
            local(2025, 3, 3, 9),
            local(2025, 3, 3, 9),
            None,
            None,
        ),
        "2": (
            "Deal 2",
            "petya",
            "Qualified",
            "open",
            None,
            "",
            "",
            "ivan@example.com",
            local(2025, 3, 3, 10),
            local(2025, 3, 6, 10),
            None,
            None,
        ),
        "3": (
            "Pump",
            None,
            "Invoice",
            "won",
            Decimal("1000.50"),
            "",
            "cold",
            "Ivan Petrov",
            local(2025, 3, 3),
            local(2025, 3, 7, 12),
            local(2025, 3, 10, 12),
            None,
        ),
        "4": (
            "Tank",
            "masha",
            "Qualified",
            "lost",
            None,
            "",
            "",
            None,
            local(2025, 3, 4, 9),
            local(2025, 3, 5, 9),
            local(2025, 3, 5, 9),
            None,
        ),
        "5": (
            "Valve",
            "petya",
            "Offer",
            "won",
            None,
            "",
            "",
            "Ivan Petrov",
            local(2025, 3, 4, 10),
            local(2025, 3, 4, 10),
            local(2025, 3, 4, 10),
            None,
        ),
        "6": (
            "Pipe",
            "masha",
            "New",
            "postponed",
            None,
            "",
            "",
            None,
            local(2025, 3, 5, 9),
            local(2025, 3, 5, 9),
            None,
            local(2025, 4, 1, 10),
        ),
    }
    # Deals 1, 3 and 5 give the same phone in three spellings: one client.
    assert deal("1").contact_id == deal("3").contact_id == deal("5").contact_id
    assert Contact.objects.count() == 2
    assert list(Contact.objects.values_list("name", "phone", "phone_normalized", "email")) == [
        ("Ivan Petrov", "+7 (900) 123-45-67", "79001234567", ""),
        ("ivan@example.com", "", "", "ivan@example.com"),
    ]


def test_stage_history_is_exactly_the_events(tmp_path, manager, other_manager):
    story(tmp_path)

    # No events: the deal entered its final stage when it was created.
    assert stage_path("1") == [(None, "New", local(2025, 3, 3, 9))]
    assert stage_path("5") == [(None, "Offer", local(2025, 3, 4, 10))]
    # The repeated Offer row is collapsed; the move back to Qualified is kept.
    assert stage_path("2") == [
        (None, "New", local(2025, 3, 3, 10)),
        ("New", "Offer", local(2025, 3, 4, 10)),
        ("Offer", "Qualified", local(2025, 3, 6, 10)),
    ]
    # The first event (12:00) is the entry stage, entered at created_at (00:00).
    assert stage_path("3") == [
        (None, "New", local(2025, 3, 3)),
        ("New", "Qualified", local(2025, 3, 5, 12)),
        ("Qualified", "Invoice", local(2025, 3, 7, 12)),
    ]
    assert stage_path("4") == [
        (None, "New", local(2025, 3, 4, 9)),
        ("New", "Qualified", local(2025, 3, 5, 9)),
    ]
    assert StageChange.objects.count() == 11
    assert not StageChange.objects.filter(actor__isnull=False).exists()


def test_status_history_closes_and_postpones(tmp_path, manager, other_manager):
    story(tmp_path)

    assert status_path("1") == []
    assert status_path("3") == [("open", "won", "Invoice", local(2025, 3, 10, 12), None, "", None)]
    # closed_at left empty: the deal closed at its last event.
    assert status_path("4") == [
        ("open", "lost", "Qualified", local(2025, 3, 5, 9), "Too expensive", "", None)
    ]
    assert deal("4").loss_reason.name == "Too expensive"
    assert status_path("5") == [("open", "won", "Offer", local(2025, 3, 4, 10), None, "", None)]
    assert status_path("6") == [
        ("open", "postponed", "New", local(2025, 3, 5, 9), None, "", local(2025, 4, 1, 10))
    ]


def test_funnel_report_over_imported_deals(tmp_path, manager, other_manager):
    story(tmp_path)
    funnel = Funnel.objects.get(name="Import")

    report = funnel_report(
        FunnelQuery(
            funnel_id=funnel.pk,
            date_from=datetime.date(2025, 3, 1),
            date_to=datetime.date(2025, 3, 31),
        )
    )

    totals = report.totals
    # New: all 6. Qualified: 2 (went on to Offer), 3, 4 and 5 (skipped over it).
    # Offer: 2, 3, 5. Invoice: 3 and 5 (won deals reached every stage). Won: 3, 5.
    assert [(step.name, step.count) for step in totals.steps] == [
        ("New", 6),
        ("Qualified", 4),
        ("Offer", 3),
        ("Invoice", 2),
        ("Won", 2),
    ]
    assert [(step.open, step.lost, step.lost_by_reason) for step in totals.steps[:4]] == [
        (2, 0, {}),
        (1, 1, {"Too expensive": 1}),
        (0, 0, {}),
        (0, 0, {}),
    ]
    assert (totals.won.count, totals.won.amount) == (2, 1000.5)
    # Deal 3's client had won deal 5 before: a repeat sale.
    assert (totals.first_sales.count, totals.repeat_sales.count) == (1, 1)
    assert totals.overall_conversion == 2 / 6
    assert list(
        Deal.objects.order_by("external_id").values_list("reached_position", flat=True)
    ) == [
        0,
        2,
        3,
        1,
        3,
        0,
    ]


def test_a_second_run_changes_nothing(tmp_path, manager, other_manager):
    story(tmp_path)
    counts = all_counts()
    rows = list(Deal.objects.order_by("pk").values())

    out = story(tmp_path)

    assert out == "Import: 0 created, 6 already imported (0 new clients).\n"
    assert all_counts() == counts
    assert list(Deal.objects.order_by("pk").values()) == rows


def test_a_later_file_adds_only_the_new_deals(tmp_path, manager, other_manager):
    story(tmp_path)
    more = STORY_DEALS + "    7,Filter,masha,2025-03-06 09:00,open,,,,,+7 900 123 45 67,,,\n"

    out = run(tmp_path, more, STORY_EVENTS)

    assert out == "Import: 1 created, 6 already imported (0 new clients).\n"
    assert Deal.objects.count() == 7
    assert deal("7").contact_id == deal("1").contact_id
    assert stage_path("7") == [(None, "New", local(2025, 3, 6, 9))]


def test_the_number_of_queries_does_not_grow_with_the_rows(tmp_path, manager):
    def import_rows(funnel_name: str, count: int) -> int:
        FunnelFactory(name=funnel_name, stages=["New", "Won over"])
        lines = ["external_id,owner,created_at,status,stage,client,loss_reason"]
        for n in range(count):
            status = ("open", "won", "lost")[n % 3]
            reason = "Too expensive" if status == "lost" else ""
            lines.append(f"{n},masha,2025-03-03,{status},New,+7 900 000 {n:04d},{reason}")
        with CaptureQueriesContext(connection) as queries:
            run(tmp_path, "\n".join(lines) + "\n", funnel=funnel_name)
        assert Deal.objects.filter(funnel__name=funnel_name).count() == count
        return len(queries)

    assert import_rows("Small", 3) == import_rows("Larger", 30)


# ---------------------------------------------------------------- parsing


def test_dates_amounts_and_delimiter(tmp_path):
    deals = """\
        external_id;created_at;amount;status;closed_at
        a;05.03.2025 14:30;1 000 000,5;won;2025-03-06T10:00:00+00:00
        b;2025-03-05;1,234.56;open;
        c;5.3.2025;0;lost;06.03.2025
    """

    run(tmp_path, deals, stages="New", delimiter=";", strict=False)

    assert list(
        Deal.objects.order_by("external_id").values_list("created_at", "amount", "closed_at")
    ) == [
        (
            local(2025, 3, 5, 14, 30),
            Decimal("1000000.50"),
            datetime.datetime(2025, 3, 6, 10, tzinfo=datetime.UTC),
        ),
        (local(2025, 3, 5), Decimal("1234.56"), None),
        (local(2025, 3, 5), Decimal("0.00"), local(2025, 3, 6)),
    ]


def test_a_forgotten_delimiter_is_named(tmp_path):
    message = refused(tmp_path, "external_id;created_at\n1;2025-03-03\n", stages="New")

    assert message == "\n".join(
        [
            REFUSED.format(1),
            "deals.csv, line 1: The header has one column with “;” in it: "
            "run with --delimiter ';'.",
        ]
    )


def test_command_line_flags(tmp_path):
    deals = write(
        tmp_path / "deals.tsv",
        "external_id\tcreated_at\towner\tstatus\n1\t2025-03-03\tnew.person\tlost\n",
    )
    out = io.StringIO()

    call_command(
        "import_deals",
        deals,
        "--funnel=Import",
        "--stages=New;Won over",
        "--create-owners",
        "--no-strict",
        "--delimiter=tab",
        stdout=out,
    )

    assert out.getvalue().splitlines()[-1] == (
        "Import: 1 created, 0 already imported (0 new clients)."
    )
    assert deal("1").owner.username == "new.person"
    assert deal("1").loss_reason.name == "Other"


def test_a_delimiter_is_one_character(tmp_path):
    message = refused(tmp_path, "external_id,created_at\n", stages="New", delimiter=", ")

    assert message.splitlines()[1] == "The delimiter is one character: “,”, “;” or “tab”."


def test_clients_are_matched_to_existing_ones(tmp_path):
    by_phone = contact_find_or_create(name="Old client", phone="+7 900 765-43-21")
    by_email = contact_find_or_create(name="Mail client", email="Anna@Example.com")
    by_name = contact_find_or_create(name="ООО Ромашка")
    deals = """\
        external_id,created_at,client
        1,2025-03-03,8 (900) 765 43 21
        2,2025-03-03,Anna <anna@example.COM>
        3,2025-03-03,ООО  Ромашка
        4,2025-03-03,Acme
        5,2025-03-03,ACME
        6,2025-03-03,
    """

    run(tmp_path, deals, stages="New")

    contacts = dict(Deal.objects.values_list("external_id", "contact_id"))
    acme = Contact.objects.get(name="Acme")
    assert contacts == {
        "1": by_phone.pk,
        "2": by_email.pk,
        "3": by_name.pk,
        "4": acme.pk,
        "5": acme.pk,
        "6": None,
    }
    assert acme.created_at == local(2025, 3, 3)
    assert Contact.objects.count() == 4


# ---------------------------------------------------------------- owners and reasons


def test_owners_by_username_or_full_name(tmp_path):
    UserFactory(username="ivanov", first_name="Sergey", last_name="Ivanov")
    deals = """\
        external_id,created_at,owner
        1,2025-03-03,ivanov
        2,2025-03-03,SERGEY  ivanov
        3,2025-03-03,
    """

    run(tmp_path, deals, stages="New")

    assert dict(Deal.objects.values_list("external_id", "owner__username")) == {
        "1": "ivanov",
        "2": "ivanov",
        "3": None,
    }


def test_an_unknown_owner_is_an_error(tmp_path, manager):
    deals = """\
        external_id,created_at,owner
        1,2025-03-03,masha
        2,2025-03-03,Sergey Ivanov
    """

    message = refused(tmp_path, deals, stages="New")

    assert message == "\n".join(
        [
            REFUSED.format(1),
            "deals.csv, line 3: owner “Sergey Ivanov” is not a user: give a username or "
            "“First Last”, create the user, or run with --create-owners.",
        ]
    )
    assert not Funnel.objects.filter(name="Import").exists()


def test_create_owners_makes_managers_who_cannot_log_in(tmp_path, manager):
    UserFactory(username="sergey.ivanov", first_name="Someone", last_name="Else")
    deals = """\
        external_id,created_at,owner
        1,2025-03-03,Sergey Ivanov
        2,2025-03-03,sergey ivanov
        3,2025-03-03,kolya
        4,2025-03-03,masha
    """

    out = run(tmp_path, deals, stages="New", create_owners=True)

    assert out.splitlines()[1] == "New owners, who cannot log in yet: kolya, sergey.ivanov2"
    created = User.objects.filter(username__in=["sergey.ivanov2", "kolya"]).order_by("username")
    assert [
        (u.username, u.first_name, u.last_name, u.role, u.has_usable_password(), u.is_active)
        for u in created
    ] == [
        ("kolya", "", "", Role.MANAGER, False, True),
        ("sergey.ivanov2", "Sergey", "Ivanov", Role.MANAGER, False, True),
    ]
    funnel = Funnel.objects.get(name="Import")
    assert set(funnel.members.values_list("username", flat=True)) == {"kolya", "sergey.ivanov2"}
    assert dict(Deal.objects.values_list("external_id", "owner__username")) == {
        "1": "sergey.ivanov2",
        "2": "sergey.ivanov2",
        "3": "kolya",
        "4": "masha",
    }

    # The second run finds them by name and creates nobody.
    users = User.objects.count()
    assert run(tmp_path, deals, create_owners=True) == (
        "Import: 0 created, 4 already imported (0 new clients).\n"
    )
    assert User.objects.count() == users


def test_a_deactivated_owner_is_an_error(tmp_path):
    UserFactory(username="gone", is_active=False)

    message = refused(tmp_path, "external_id,created_at,owner\n1,2025-03-03,gone\n", stages="New")

    assert message.splitlines()[1] == (
        "deals.csv, line 2: owner “gone” is deactivated and cannot own deals: choose another."
    )


def test_unknown_loss_reasons_are_added_to_the_funnel(tmp_path):
    funnel = FunnelFactory(name="Import", stages=["New"])
    deals = """\
        external_id,created_at,status,loss_reason
        1,2025-03-03,lost,spam
        2,2025-03-03,lost,Too  expensive
        3,2025-03-03,lost,too expensive
    """

    out = run(tmp_path, deals)

    assert out.splitlines()[0] == "Added loss reasons: Too expensive"
    added = LossReason.objects.get(funnel=funnel, name="Too expensive")
    assert (added.position, added.requires_comment, added.is_active) == (6, False, True)
    assert dict(Deal.objects.values_list("external_id", "loss_reason__name")) == {
        "1": "Spam",
        "2": "Too expensive",
        "3": "Too expensive",
    }


LOST_WITHOUT_REASON = """\
    external_id,created_at,status,loss_reason,loss_comment
    1,2025-03-03,lost,,
    2,2025-03-03,lost,Other,
    3,2025-03-03,lost,Other,Moved abroad
"""


def test_strict_mode_refuses_losses_without_a_reason(tmp_path):
    message = refused(tmp_path, LOST_WITHOUT_REASON, stages="New")

    assert message == "\n".join(
        [
            REFUSED.format(2),
            "deals.csv, line 2: A lost deal needs a loss_reason: fill it in, or run with "
            "--no-strict to import it with the reason “Other”.",
            "deals.csv, line 3: The reason “Other” needs a comment: fill in loss_comment, "
            "or run with --no-strict.",
        ]
    )


def test_no_strict_imports_losses_without_a_reason_as_other(tmp_path):
    run(tmp_path, LOST_WITHOUT_REASON, stages="New", strict=False)

    assert list(
        Deal.objects.order_by("external_id").values_list(
            "external_id", "loss_reason__name", "loss_comment"
        )
    ) == [
        ("1", "Other", "Imported without a reason"),
        ("2", "Other", "Imported without a comment"),
        ("3", "Other", "Moved abroad"),
    ]
    assert status_path("1") == [
        ("open", "lost", "New", local(2025, 3, 3), "Other", "Imported without a reason", None)
    ]


# ---------------------------------------------------------------- refusals


def test_bad_rows_are_named_by_line_and_nothing_is_written(tmp_path):
    deals = """\
        external_id,created_at,stage
        1,2025-03-03,New
        2,2025-13-03,New
        3,2025-03-03,Qualified
        4,2025-03-03,Nowhere
    """

    message = refused(tmp_path, deals, stages=STAGES)

    assert message == "\n".join(
        [
            REFUSED.format(2),
            f"deals.csv, line 3: created_at “2025-13-03” is not a date: write it as {DATES}.",
            "deals.csv, line 5: stage “Nowhere” is not a stage of the funnel “Import”: "
            "use one of New, Qualified, Offer, Invoice.",
        ]
    )
    assert not Funnel.objects.filter(name="Import").exists()


def test_nothing_is_written_into_an_existing_funnel_either(tmp_path, funnel):
    deals = "external_id,created_at,stage\n1,2025-03-03,S1\n2,2025-03-03,S9\n"
    counts = all_counts()

    with pytest.raises(CommandError):
        run(tmp_path, deals, funnel="B2B")

    assert all_counts() == counts


@pytest.mark.parametrize(
    ("deals", "events", "expected"),
    [
        pytest.param(
            "external_id,created_at,status\n1,2025-03-03,done\n",
            None,
            "deals.csv, line 2: status “done” is unknown: use open, postponed, won or lost.",
            id="unknown status",
        ),
        pytest.param(
            "external_id,created_at\n1,2025-03-03\n2,2025-03-03\n1,2025-03-04\n",
            None,
            "deals.csv, line 4: external_id “1” is already on line 2: each deal appears once.",
            id="duplicate external_id",
        ),
        pytest.param(
            "external_id,created_at\n1,2999-01-01 10:00\n",
            None,
            "deals.csv, line 2: created_at 2999-01-01 10:00:00 is in the future.",
            id="created in the future",
        ),
        pytest.param(
            "external_id,created_at\n1,\n",
            None,
            f"deals.csv, line 2: created_at is empty: give the date the deal was created "
            f"({DATES}).",
            id="no created_at",
        ),
        pytest.param(
            "external_id,created_at,status,closed_at\n1,2025-03-03 10:00,won,2025-03-03\n",
            None,
            "deals.csv, line 2: closed_at 2025-03-03 00:00:00 is before created_at "
            "2025-03-03 10:00:00.",
            id="closed before created",
        ),
        pytest.param(
            "external_id,created_at,status,closed_at\n1,2025-03-03,won,2025-03-04\n",
            "external_id,at,stage\n1,2025-03-03,New\n1,2025-03-05,Offer\n",
            "deals.csv, line 2: closed_at 2025-03-04 00:00:00 is before the deal's last event "
            "at 2025-03-05 00:00:00 (events.csv, line 3).",
            id="closed before its last event",
        ),
        pytest.param(
            "external_id,created_at,status,closed_at\n1,2025-03-03,open,2025-03-04\n",
            None,
            "deals.csv, line 2: closed_at is given but the deal is open: clear it or fix the "
            "status.",
            id="closed_at on an open deal",
        ),
        pytest.param(
            "external_id,created_at,status,loss_reason\n1,2025-03-03,won,Spam\n",
            None,
            "deals.csv, line 2: loss_reason and loss_comment are only for lost deals: clear "
            "them or fix the status.",
            id="reason on a won deal",
        ),
        pytest.param(
            "external_id,created_at,status\n1,2025-03-03,postponed\n",
            None,
            "deals.csv, line 2: A postponed deal needs next_contact_at: the date to contact "
            "the client.",
            id="postponed without a date",
        ),
        pytest.param(
            "external_id,created_at,status,next_contact_at\n1,2025-03-03,postponed,2025-03-02\n",
            None,
            "deals.csv, line 2: next_contact_at 2025-03-02 00:00:00 must be later than "
            "2025-03-03 00:00:00, when the deal was postponed.",
            id="postponed into the past",
        ),
        pytest.param(
            "external_id,created_at,amount\n1,2025-03-03,12 руб\n2,2025-03-03,-5\n",
            None,
            "deals.csv, line 2: amount “12 руб” is not a number.\n"
            "deals.csv, line 3: amount “-5” is out of range: give a number from 0 to "
            "999 999 999 999.",
            id="amounts",
        ),
        pytest.param(
            "external_id,created_at,client\n1,2025-03-03,Ivan <ivan@>\n2,2025-03-03,+7 12345\n",
            None,
            "deals.csv, line 2: client “Ivan <ivan@>”: “ivan@” is not an email address.\n"
            "deals.csv, line 3: client “+7 12345”: “+7 12345” is not a phone number.",
            id="clients",
        ),
        pytest.param(
            "external_id,created_at,temperature\n1,2025-03-03,hot\n",
            None,
            "deals.csv, line 2: temperature “hot” is unknown: use warm or cold.",
            id="temperature",
        ),
        pytest.param(
            "external_id,created_at\n1,2025-03-03\n",
            "external_id,at,stage\n1,2025-03-03,New\n2,2025-03-04,New\n1,03/05/2025,Offer\n",
            "events.csv, line 3: external_id “2” is not in deals.csv: add the deal there or "
            "remove its events.\n"
            f"events.csv, line 4: at “03/05/2025” is not a date: write it as {DATES}.",
            id="events: unknown deal, bad date",
        ),
        pytest.param(
            "external_id,created_at\n1,2025-03-03 10:00\n",
            "external_id,at,stage\n1,2025-03-03 09:00,New\n",
            "events.csv, line 2: at 2025-03-03 09:00:00 is before the deal's created_at "
            "2025-03-03 10:00:00 (deals.csv, line 2).",
            id="event before the deal",
        ),
        pytest.param(
            "external_id,created_at,stage\n1,2025-03-03,Offer\n",
            "external_id,at,stage\n1,2025-03-03,New\n1,2025-03-04,Qualified\n",
            "deals.csv, line 2: stage is “Offer” but the deal's last event (events.csv, line 3) "
            "puts it in “Qualified”: make them agree or leave stage empty.",
            id="stage disagrees with the events",
        ),
        pytest.param(
            "external_id,created_at,color,size\n1,2025-03-03,red,XL\n",
            None,
            "deals.csv, line 1: Unknown columns: color, size. The columns are: external_id, "
            "title, owner, created_at, status, stage, amount, source, product, region, "
            "temperature, client, loss_reason, loss_comment, closed_at, next_contact_at.",
            id="unknown columns",
        ),
        pytest.param(
            "external_id,title\n1,Boiler\n",
            "external_id,stage\n1,New\n",
            "deals.csv, line 1: Required columns are missing: created_at.\n"
            "events.csv, line 1: Required columns are missing: at.",
            id="missing columns",
        ),
        pytest.param(
            "external_id,created_at\n1,2025-03-03,extra\n",
            None,
            "deals.csv, line 2: The row has 3 values but the header has 2 columns: check the "
            "delimiter and quote values that contain it.",
            id="too many values",
        ),
    ],
)
def test_refusals(tmp_path, deals, events, expected):
    message = refused(tmp_path, deals, events, stages=STAGES)

    lines = message.splitlines()
    assert lines[0] == REFUSED.format(len(lines) - 1)
    assert "\n".join(lines[1:]) == expected
    assert not Funnel.objects.filter(name="Import").exists()


def test_an_unknown_funnel_needs_stages(tmp_path):
    message = refused(tmp_path, "external_id,created_at\n1,2025-03-03\n", funnel="Nowhere")

    assert message == "\n".join(
        [
            REFUSED.format(1),
            "The funnel “Nowhere” does not exist: check the name, or give "
            '--stages "First;Second;…" to create it.',
        ]
    )


def test_stages_must_match_an_existing_funnel(tmp_path, funnel):
    message = refused(
        tmp_path, "external_id,created_at\n1,2025-03-03\n", funnel="B2B", stages="S1;S2"
    )

    assert message.splitlines()[1] == (
        "The funnel “B2B” already exists with the stages S1; S2; S3; S4; --stages says "
        "S1; S2. Drop --stages or make it match."
    )
    # The same stages, in any letter case, are fine.
    run(tmp_path, "external_id,created_at\n1,2025-03-03\n", funnel="B2B", stages="s1;s2;s3;s4")
    assert Deal.objects.filter(funnel=funnel).count() == 1


def test_at_most_fifty_errors_are_listed(tmp_path):
    rows = "".join(f"{n},yesterday\n" for n in range(60))

    message = refused(tmp_path, "external_id,created_at\n" + rows, stages="New")

    lines = message.splitlines()
    assert lines[0] == REFUSED.format(60)
    assert len(lines) == 52
    assert lines[50] == (
        f"deals.csv, line 51: created_at “yesterday” is not a date: write it as {DATES}."
    )
    assert lines[51] == "… and 10 more errors."


# ---------------------------------------------------------------- a generated sample


def sample_files(
    directory: str | Path, *, count: int, seed: int = 1
) -> tuple[str, str, dict[str, int]]:
    """Write ``deals.csv`` and ``events.csv`` with ``count`` deals on stages A..D, about
    2.5 events each; return the paths and the rows the import must create.

    Used by the test below and to time a large import::

        DJANGO_SETTINGS_MODULE=crm.settings .venv/bin/python -c "import django; django.setup();
        from tests.deals.test_importing import sample_files; sample_files('/tmp', count=100_000)"
    """
    rng = random.Random(seed)
    directory = Path(directory)
    stages = ["A", "B", "C", "D"]
    reasons = ["Spam", "Too expensive", "Bought from a competitor", "No budget", "No answer"]
    end = datetime.datetime(2025, 6, 1, 9, 0)
    expected = {"deals": count, "stage_changes": 0, "status_changes": 0}
    deals_path, events_path = directory / "deals.csv", directory / "events.csv"
    with (
        open(deals_path, "w", newline="", encoding="utf-8") as deals_file,
        open(events_path, "w", newline="", encoding="utf-8") as events_file,
    ):
        deals = csv.writer(deals_file)
        events = csv.writer(events_file)
        deals.writerow(
            [
                *("external_id", "title", "owner", "created_at", "status", "amount", "source"),
                *("region", "client", "loss_reason", "closed_at", "next_contact_at"),
            ]
        )
        events.writerow(["external_id", "at", "stage"])
        for number in range(count):
            created = end - datetime.timedelta(minutes=rng.randrange(1, 365 * 24 * 60))
            path = [0]
            while len(path) < 5 and rng.random() < 0.65:
                path.append(rng.choice([s for s in range(len(stages)) if s != path[-1]]))
            moments = [created]
            for _ in path[1:]:
                moments.append(moments[-1] + datetime.timedelta(minutes=rng.randrange(5, 9000)))
            status = rng.choices(["open", "postponed", "won", "lost"], [50, 5, 15, 30])[0]
            closed = next_contact = reason = ""
            if status in ("won", "lost"):
                closed_at = moments[-1] + datetime.timedelta(minutes=rng.randrange(0, 3000))
                closed = closed_at.strftime("%Y-%m-%d %H:%M") if rng.random() < 0.8 else ""
                reason = rng.choice(reasons) if status == "lost" else ""
            if status == "postponed":
                next_contact = (moments[-1] + datetime.timedelta(days=3)).strftime("%d.%m.%Y")
            client = f"+7 9{rng.randrange(10**8, 10**9)}" if rng.random() < 0.7 else ""
            if rng.random() < 0.1:
                client = f"Client {rng.randrange(count // 5 + 1)}"
            deals.writerow(
                [
                    f"ext-{number}",
                    f"Deal {number}",
                    f"Manager {rng.randrange(20)}" if rng.random() < 0.9 else "",
                    created.strftime("%Y-%m-%d %H:%M:%S"),
                    status,
                    f"{rng.randrange(1000, 500000)},{rng.randrange(100):02d}",
                    rng.choice(["site", "call", "referral", ""]),
                    rng.choice(["Moscow", "Kazan", ""]),
                    client,
                    reason,
                    closed,
                    next_contact,
                ]
            )
            for stage, moment in zip(path, moments, strict=True):
                events.writerow(
                    [f"ext-{number}", moment.strftime("%Y-%m-%d %H:%M:%S"), stages[stage]]
                )
            expected["stage_changes"] += len(path)
            expected["status_changes"] += status != "open"
    return str(deals_path), str(events_path), expected


def test_a_generated_sample_imports_whole(tmp_path):
    deals_path, events_path, expected = sample_files(tmp_path, count=300)

    call_command(
        "import_deals",
        deals_path,
        events_path,
        funnel="Import",
        stages="A;B;C;D",
        create_owners=True,
        stdout=io.StringIO(),
    )

    assert {
        "deals": Deal.objects.count(),
        "stage_changes": StageChange.objects.count(),
        "status_changes": StatusChange.objects.count(),
    } == expected
    assert User.objects.filter(username__startswith="manager.").count() == 20
    assert not Deal.objects.filter(status=DealStatus.LOST, loss_reason__isnull=True).exists()
