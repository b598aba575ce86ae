"""Lead intake (deals/intake.py): one deal per lead, duplicates attached, fair round-robin,
retries answered with the original result."""

import importlib
from collections import Counter
from decimal import Decimal

import pytest
from django.apps import apps as django_apps
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Role
from analytics.models import StageReach, StageTime
from crm.errors import Forbidden, InvalidInput
from deals.intake import (
    IdempotencyKeyReused,
    IntakeClient,
    LeadData,
    lead_intake,
)
from deals.models import (
    Deal,
    DealStatus,
    IntakeIdempotencyRecord,
    LeadReceipt,
    Note,
    StageChange,
    Task,
    WebhookDelivery,
    WebhookSubscription,
)
from deals.services import deal_lose
from tests.factories import DealFactory, FunnelFactory, UserFactory
from tests.story import row_counts

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(funnel):
    return IntakeClient(label="key:1", funnel_id=funnel.pk)


def lead(n: int = 0, **values) -> LeadData:
    return LeadData(
        **{"contact_name": f"Client {n}", "contact_phone": f"+7 900 000 00 {n:02d}"} | values
    )


def take(client, *leads, **options):
    return lead_intake(client=client, leads=list(leads), **options)


def test_a_lead_becomes_a_deal_at_the_first_stage_with_its_tasks(manager):
    funnel = FunnelFactory(
        name="Site",
        members=[manager],
        stages=[{"name": "New", "tasks": [("Call the lead", 2)]}, "Offer"],
    )
    client = IntakeClient(label="key:7", funnel_id=funnel.pk)

    result = take(
        client,
        LeadData(
            title="Air conditioner",
            contact_name="Ivan",
            contact_phone="8 (900) 123-45-67",
            contact_email="Ivan@Example.com",
            company="ACME",
            source="site",
            amount=Decimal("1500.00"),
            comment="Call after six",
            utm={"source": "yandex", "campaign": "spring"},
            external_id="form-1",
        ),
    )

    deal = Deal.objects.select_related("contact", "stage").get()
    assert result.results == [
        {
            "index": 0,
            "status": "created",
            "deal_id": deal.pk,
            "owner_id": manager.pk,
            "external_id": "form-1",
            "replayed": False,
            "error": None,
        }
    ]
    assert (deal.title, deal.stage.name, deal.status, deal.owner, deal.source) == (
        "Air conditioner",
        "New",
        DealStatus.OPEN,
        manager,
        "site",
    )
    assert (deal.amount, deal.external_id) == (Decimal("1500.00"), "form-1")
    assert (deal.contact.name, deal.contact.phone_normalized, deal.contact.email_normalized) == (
        "Ivan",
        "79001234567",
        "ivan@example.com",
    )
    assert list(Task.objects.values_list("title", "assignee")) == [("Call the lead", manager.pk)]
    assert list(Note.objects.values_list("text", flat=True)) == [
        "Request received (key:7).\nComment: Call after six\nUTM: campaign=spring, source=yandex"
    ]
    receipt = LeadReceipt.objects.get()
    assert (receipt.deal, receipt.outcome, receipt.external_id) == (deal, "created", "form-1")


def test_round_robin_is_fair_and_skips_away_and_non_managers(head, team):
    managers = [UserFactory(username=name, team=team) for name in ("anna", "boris", "vera")]
    away = UserFactory(username="gleb", team=team, is_away=True)
    inactive = UserFactory(username="dina", team=team, is_active=False)
    funnel = FunnelFactory(name="RR", members=[*managers, away, inactive, head])
    client = IntakeClient(label="key:1", funnel_id=funnel.pk)

    for n in range(9):
        take(client, lead(n))

    owners = Counter(Deal.objects.values_list("owner__username", flat=True))
    assert owners == {"anna": 3, "boris": 3, "vera": 3}
    # In turn, not in clumps.
    assert list(Deal.objects.order_by("pk").values_list("owner__username", flat=True)) == [
        "anna", "boris", "vera"
    ] * 3  # fmt: skip


def test_round_robin_continues_across_requests_and_batches(manager, other_manager, funnel):
    client = IntakeClient(label="key:1", funnel_id=funnel.pk)
    take(client, lead(1))
    take(client, lead(2), lead(3), lead(4))

    assert list(Deal.objects.order_by("pk").values_list("owner__username", flat=True)) == [
        "masha",
        "petya",
        "masha",
        "petya",
    ]


def test_a_given_owner_takes_the_lead_and_the_turn_is_kept(client, manager, other_manager):
    take(client, lead(1, owner_id=other_manager.pk))
    take(client, lead(2))

    assert list(Deal.objects.order_by("pk").values_list("owner__username", flat=True)) == [
        "petya",
        "masha",
    ]


def test_without_managers_at_work_the_lead_is_unassigned(manager, other_manager, funnel, client):
    manager.is_away = other_manager.is_away = True
    manager.save()
    other_manager.save()

    result = take(client, lead(1))

    assert result.results[0]["owner_id"] is None
    assert Deal.objects.get().owner is None


def test_a_lead_matching_an_open_deal_by_phone_is_attached_as_a_note(client, funnel, manager):
    first = take(client, lead(1, contact_phone="+7 900 111 22 33")).results[0]

    second = take(
        client,
        LeadData(
            contact_name="Ivan again",
            contact_phone="8 900 111-22-33",
            comment="Still waiting",
            source="call",
        ),
    ).results[0]

    assert second == {
        "index": 0,
        "status": "attached",
        "deal_id": first["deal_id"],
        "owner_id": manager.pk,
        "external_id": None,
        "replayed": False,
        "error": None,
    }
    assert Deal.objects.count() == 1
    assert list(Note.objects.filter(deal_id=first["deal_id"]).values_list("text", flat=True)) == [
        "The client sent another request (key:1).\nname: Ivan again\nphone: 8 900 111-22-33\n"
        "source: call\nComment: Still waiting"
    ]
    assert list(LeadReceipt.objects.order_by("pk").values_list("outcome", flat=True)) == [
        "created",
        "attached",
    ]


def test_a_lead_matching_by_email_is_attached(client):
    first = take(client, LeadData(contact_email="ivan@example.com")).results[0]
    second = take(client, LeadData(contact_email=" IVAN@example.COM ")).results[0]
    assert (second["status"], second["deal_id"]) == ("attached", first["deal_id"])


def test_a_closed_deal_or_another_funnel_does_not_catch_the_lead(client, funnel, manager):
    first = take(client, lead(1)).results[0]
    deal_lose(actor=None, deal=first["deal_id"], loss_reason=funnel.loss_reasons.first())
    other = FunnelFactory(name="B2C", members=[manager])
    DealFactory(funnel=other, values={"contact_phone": "+7 900 000 00 01", "contact_name": "X"})

    again = take(client, lead(1)).results[0]

    assert again["status"] == "created"
    assert again["deal_id"] != first["deal_id"]


def test_a_key_may_be_set_to_open_a_deal_for_every_lead(funnel):
    client = IntakeClient(label="key:1", funnel_id=funnel.pk, attach_duplicates=False)
    take(client, lead(1))
    assert take(client, lead(1)).results[0]["status"] == "created"
    assert Deal.objects.count() == 2


def test_a_lead_with_a_known_external_id_returns_its_first_outcome(client):
    first = take(client, lead(1, external_id="crm-42")).results[0]
    counts = row_counts()

    again = take(client, lead(5, external_id="crm-42")).results[0]

    assert again == {**first, "replayed": True}
    assert row_counts() == counts


def test_the_same_external_id_twice_in_one_batch_makes_one_deal(client):
    result = take(client, lead(1, external_id="x"), lead(2, external_id="x"))
    assert [r["status"] for r in result.results] == ["created", "created"]
    assert [r["replayed"] for r in result.results] == [False, True]
    assert Deal.objects.count() == 1


def test_a_retry_with_the_idempotency_key_returns_the_stored_result(client):
    first = take(client, lead(1), lead(2), idempotency_key="k-1", fingerprint="f")
    counts = row_counts()

    again = take(client, lead(1), lead(2), idempotency_key="k-1", fingerprint="f")

    assert (again.results, again.replayed, first.replayed) == (first.results, True, False)
    assert row_counts() == counts
    assert IntakeIdempotencyRecord.objects.get().result == {"results": first.results}


def test_an_idempotency_key_reused_for_another_request_is_refused(client):
    take(client, lead(1), idempotency_key="k-1", fingerprint="f")
    counts = row_counts()

    with pytest.raises(IdempotencyKeyReused) as caught:
        take(client, lead(2), idempotency_key="k-1", fingerprint="other")

    assert caught.value.as_dict() == {
        "code": "idempotency_key_reused",
        "detail": "This Idempotency-Key was used for a different request. "
        "Use a new key for a new request.",
        "fields": {"Idempotency-Key": "Already used for another request body."},
    }
    assert row_counts() == counts


def test_idempotency_keys_belong_to_their_client(funnel):
    take(IntakeClient(label="key:1", funnel_id=funnel.pk), lead(1), idempotency_key="same")
    result = take(
        IntakeClient(label="key:2", funnel_id=funnel.pk, attach_duplicates=False),
        lead(1),
        idempotency_key="same",
    )
    assert (result.replayed, Deal.objects.count()) == (False, 2)


def test_a_bad_lead_in_a_batch_is_rejected_and_the_others_go_in(client):
    result = take(
        client,
        lead(1),
        LeadData(contact_name="Bad", custom_fields={"budget": "1"}),
        InvalidInput("The lead has errors.", fields={"contact.phone": "Bad phone."}),
        LeadData(contact_name="Bad", owner_id=999999),
        lead(2),
    )

    assert [r["status"] for r in result.results] == [
        "created",
        "rejected",
        "rejected",
        "rejected",
        "created",
    ]
    assert [r["error"] for r in result.results[1:4]] == [
        {
            "code": "invalid",
            "detail": "Some custom fields are invalid: fix the marked fields.",
            "fields": {"custom_fields.budget": "The funnel has no custom field “budget”."},
        },
        {
            "code": "invalid",
            "detail": "The lead has errors.",
            "fields": {"contact.phone": "Bad phone."},
        },
        {
            "code": "invalid",
            "detail": "User 999999 is not an active user.",
            "fields": {"owner_id": "Choose an active user."},
        },
    ]
    # The rejected leads took no turn: masha, then petya.
    assert list(Deal.objects.order_by("pk").values_list("owner__username", flat=True)) == [
        "masha",
        "petya",
    ]


def test_a_single_rejected_lead_raises_and_stores_nothing(client, funnel):
    counts = row_counts()
    with pytest.raises(InvalidInput) as caught:
        take(
            client,
            LeadData(contact_name="Ivan", contact_email="not-an-email"),
            idempotency_key="k",
            raise_on_reject=True,
        )
    assert caught.value.fields == {"contact.email": "“not-an-email” is not an email address."}
    assert row_counts() == counts
    assert IntakeIdempotencyRecord.objects.count() == 0


def test_a_stage_requirement_names_the_lead_field(manager):
    funnel = FunnelFactory(
        name="Strict", members=[manager], stages=[{"name": "S1", "required_fields": ["source"]}]
    )
    client = IntakeClient(label="key:1", funnel_id=funnel.pk)
    result = take(client, lead(1))
    assert result.results[0]["error"]["fields"] == {"source": "Required by the stage “S1”."}


def test_a_funnel_key_cannot_post_into_another_funnel(client, manager):
    other = FunnelFactory(name="B2C", members=[manager])
    result = take(client, lead(1, funnel_id=other.pk))
    assert result.results[0]["error"] == {
        "code": "forbidden",
        "detail": "This key posts leads only into its own funnel.",
        "fields": {"funnel": "Leave it out or give the key's funnel."},
    }
    with pytest.raises(Forbidden):
        take(client, lead(1, funnel_id=other.pk), raise_on_reject=True)


def test_a_key_without_a_funnel_must_name_one(funnel):
    client = IntakeClient(label="key:1")
    assert take(client, lead(1)).results[0]["error"]["fields"] == {
        "funnel": "Give the funnel's id (this key has no default funnel)."
    }
    assert take(client, lead(1, funnel_id=funnel.pk)).results[0]["status"] == "created"


def test_a_person_posts_only_into_his_funnels(funnel, manager, outsider):
    assert (
        take(IntakeClient.for_user(manager), lead(1, funnel_id=funnel.pk)).results[0]["status"]
        == "created"
    )
    rejected = take(IntakeClient.for_user(outsider), lead(2, funnel_id=funnel.pk)).results[0]
    assert rejected["error"]["code"] == "forbidden"


def test_an_archived_funnel_takes_no_leads(client, funnel):
    funnel.is_active = False
    funnel.save()
    assert take(client, lead(1)).results[0]["error"]["fields"] == {
        "funnel": "Choose an active funnel."
    }


def test_a_batch_over_the_limit_is_refused(client):
    with pytest.raises(InvalidInput):
        take(client, *[lead(1)] * 1001)
    assert Deal.objects.count() == 0


def test_heads_are_not_in_the_rotation(head, manager, funnel):
    funnel.members.add(head)
    assert head.role == Role.HEAD
    client = IntakeClient(label="key:1", funnel_id=funnel.pk)
    for n in range(4):
        take(client, lead(n))
    assert set(Deal.objects.values_list("owner__username", flat=True)) == {"masha", "petya"}


def test_two_leads_of_one_client_in_a_batch_make_one_deal_and_a_note(client):
    result = take(
        client,
        lead(1, contact_phone="+7 900 111 22 33"),
        lead(2, contact_phone="8 900 111-22-33", comment="Me again"),
        LeadData(contact_email="new@example.com"),
        LeadData(contact_email="NEW@example.com"),
    )

    statuses = [(r["status"], r["deal_id"]) for r in result.results]
    deals = list(Deal.objects.order_by("pk").values_list("pk", flat=True))
    assert statuses == [
        ("created", deals[0]),
        ("attached", deals[0]),
        ("created", deals[1]),
        ("attached", deals[1]),
    ]
    assert Note.objects.filter(deal_id=deals[0]).count() == 1
    # One client per phone and email, not one per lead.
    assert Deal.objects.values("contact").distinct().count() == 2


def test_every_deal_of_a_large_batch_keeps_its_new_client(client):
    # From ten deals on, PostgreSQL writes them with COPY: each must still name its client.
    take(client, *(lead(n, contact_email=f"c{n}@example.com") for n in range(12)))

    rows = list(
        Deal.objects.order_by("pk").values_list("contact__phone_normalized", "contact__email")
    )
    assert rows == [(f"79000000{n:03d}", f"c{n}@example.com") for n in range(12)]


def test_awkward_text_is_stored_as_sent(client):
    # On PostgreSQL a lead's rows go in as arrays (writes_together): quoting must hold.
    text = 'He said "call me", {later}, \\back\\slash, it\'s NULL; ёлка'
    payload = {"comment": text, "nested": {"list": [1, "a,b", None]}}
    take(client, lead(1, comment=text, utm={"campaign": text}, payload=payload))

    assert Note.objects.get().text == (
        f"Request received (key:1).\nComment: {text}\nUTM: campaign={text}"
    )
    assert LeadReceipt.objects.get().payload == payload


def test_a_single_lead_takes_eight_statements_on_postgresql(client):
    take(client, lead(0))  # the intake row and the funnel's first lead exist

    with CaptureQueriesContext(connection) as queries:
        take(client, lead(1, external_id="x-1"))

    # The funnel with its stages and templates, the advisory locks with the known
    # external ids (one round trip), the clients, the new client, the intake row
    # (locked) with the rotation, the deal, the webhook subscriptions, then every other
    # write: on PostgreSQL in one round trip (the turn, history, summaries, receipt), on
    # SQLite one statement each.
    statements = [query["sql"] for query in queries.captured_queries[1:-1]]  # savepoint
    if connection.vendor == "postgresql":
        assert len(statements) == 8
        assert "pg_advisory_xact_lock" in statements[1]
        assert "r.external_id" in statements[1]
        assert statements[-1].startswith("UPDATE deals_funnelintakestate")
        assert statements[-1].count("INSERT INTO") == 4
    else:
        assert len(statements) == 13
    # The funnel's turn is locked as late as it can be: after the client is written,
    # right before the deal.
    turn = next(i for i, sql in enumerate(statements) if "deals_funnelintakestate" in sql)
    # The upsert that locks the row goes first: the rotation is read once it is held.
    assert statements[turn].startswith("INSERT INTO deals_funnelintakestate")
    assert 'INSERT INTO "deals_contact"' in statements[turn - 1]
    deal = next(i for i, sql in enumerate(statements) if sql.startswith('INSERT INTO "deals_deal"'))
    assert turn < deal
    assert all("state" in sql for sql in statements[turn:deal])  # SQLite: three for the turn


@pytest.mark.skipif(connection.vendor != "postgresql", reason="writes_together is PostgreSQL's")
def test_with_server_side_binding_the_writes_go_one_by_one(client, monkeypatch):
    options = {**connection.settings_dict.get("OPTIONS", {}), "server_side_binding": True}
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", options)

    with CaptureQueriesContext(connection) as queries:
        take(client, lead(1, comment="Call me"))

    writes = [
        q["sql"].split(" (")[0]
        for q in queries.captured_queries
        if q["sql"].startswith("INSERT") and "unnest(" in q["sql"]
    ]
    assert writes == [
        'INSERT INTO "deals_stagechange"',
        'INSERT INTO "analytics_stagereach"',
        'INSERT INTO "analytics_stagetime"',
        'INSERT INTO "deals_note"',
        'INSERT INTO "deals_leadreceipt"',
    ]
    assert (Deal.objects.count(), StageChange.objects.count(), Note.objects.count()) == (1, 1, 1)


def test_the_upgrade_gives_back_their_client_to_deals_written_without_one(client):
    """deals/migrations/0009: the deals an earlier version wrote with no client (a
    batch of ten or more on PostgreSQL) get it back from their receipts."""
    relink = importlib.import_module("deals.migrations.0009_relink_batch_lead_clients")
    phone_only = lead(1, payload={"contact": {"phone": "8 (900) 000-00-01"}})
    email_only = lead(
        2,
        contact_phone="",
        contact_email="b@example.com",
        payload={"contact": {"email": " B@Example.com"}},
    )
    name_only = lead(3, contact_phone="", payload={"contact": {"name": "Client 3"}})
    take(client, phone_only, email_only, name_only)
    linked = dict(Deal.objects.values_list("pk", "contact"))
    Deal.objects.update(contact=None)  # as the earlier version wrote them

    relink.relink_clients(django_apps, None)

    restored = dict(Deal.objects.values_list("pk", "contact"))
    first, second, third = sorted(linked)
    assert restored == {first: linked[first], second: linked[second], third: None}


def test_a_batch_takes_the_same_number_of_queries_whatever_its_size(client):
    take(client, lead(0))  # the intake row and the funnel's first lead exist

    def batch(start: int, size: int) -> list[LeadData]:
        return [
            LeadData(
                contact_name=f"Client {n}",
                contact_phone=f"+7 901 {n:07d}",
                external_id=f"x-{n}",
                comment="From the site",
            )
            for n in range(start, start + size)
        ]

    with CaptureQueriesContext(connection) as small:
        take(client, *batch(100, 5))
    with CaptureQueriesContext(connection) as large:  # 30: SQLite splits inserts at 999 values
        take(client, *batch(200, 30))

    assert len(large) == len(small)
    assert Deal.objects.count() == 36
    assert StageChange.objects.count() == 36
    assert (StageReach.objects.count(), StageTime.objects.count()) == (36, 36)
    assert Note.objects.count() == 35


def test_a_batch_sends_one_webhook_delivery_per_new_deal(client, funnel):
    WebhookSubscription.objects.create(
        url="http://127.0.0.1:9/hook", secret="s", events=["created"], funnel=funnel
    )
    WebhookSubscription.objects.create(url="http://127.0.0.1:9/won", secret="s", events=["won"])

    result = take(client, lead(1), lead(2), lead(1))

    deliveries = WebhookDelivery.objects.order_by("pk")
    assert [d.payload["deal"]["id"] for d in deliveries] == [
        r["deal_id"] for r in result.results[:2]
    ]
    assert {d.event for d in deliveries} == {"created"}


def test_a_funnel_without_stages_rejects_its_leads(manager):
    funnel = FunnelFactory(name="Empty", members=[manager])
    funnel.stages.all().delete()  # the services never leave a funnel so; the intake checks
    client = IntakeClient(label="key:1", funnel_id=funnel.pk)

    with pytest.raises(InvalidInput) as caught:
        take(client, lead(1), raise_on_reject=True)
    batch = take(client, lead(1), lead(2))

    assert caught.value.message == "The funnel has no stages yet."
    assert [r["status"] for r in batch.results] == ["rejected", "rejected"]
    assert batch.results[0]["error"]["detail"] == "The funnel has no stages yet."
    assert Deal.objects.count() == 0
