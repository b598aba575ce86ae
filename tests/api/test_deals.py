"""The deals API: visibility, filters, cursor pagination, actions and error mapping."""

import datetime

import pytest
from django.utils import timezone

from deals.models import Deal, DealStatus
from tests.factories import DealFactory
from tests.story import nothing_changes

pytestmark = pytest.mark.django_db


@pytest.fixture
def masha_client(make_client, manager, everything):
    return make_client(scopes=everything, user=manager)


@pytest.fixture
def deals(funnel, manager, other_manager):
    return {
        "mine": DealFactory(funnel=funnel, owner=manager, title="Mine", values={"source": "site"}),
        "petyas": DealFactory(funnel=funnel, owner=other_manager, title="Petya's"),
        "free": DealFactory(funnel=funnel, title="Unassigned"),
    }


def titles(response) -> list[str]:
    return [deal["title"] for deal in response.json()["results"]]


def test_a_manager_token_lists_only_what_he_may_see(masha_client, deals):
    response = masha_client.get("/api/v1/deals/")
    assert response.status_code == 200
    assert titles(response) == ["Unassigned", "Mine"]


def test_a_manager_token_cannot_read_another_managers_deal(masha_client, deals):
    for url in ("", "history/", "tasks/", "notes/"):
        response = masha_client.get(f"/api/v1/deals/{deals['petyas'].pk}/{url}")
        assert response.status_code == 404
        assert response.json() == {
            "code": "not_found",
            "detail": f"Deal {deals['petyas'].pk} does not exist.",
            "fields": {},
        }


def test_a_manager_token_cannot_change_another_managers_deal(masha_client, deals, stages):
    petyas = deals["petyas"]
    with nothing_changes(petyas):
        response = masha_client.post(
            f"/api/v1/deals/{petyas.pk}/move/", {"stage": stages["S2"].pk}, format="json"
        )
    assert response.status_code == 404


def test_a_head_token_sees_his_team(make_client, head, deals, everything):
    client = make_client(scopes=everything, user=head)
    assert sorted(titles(client.get("/api/v1/deals/"))) == ["Mine", "Petya's", "Unassigned"]


def test_filters(masha_client, deals, manager, stages):
    def listed(**params):
        response = masha_client.get("/api/v1/deals/", params)
        assert response.status_code == 200, response.json()
        return titles(response)

    assert listed(owner=manager.pk) == ["Mine"]
    assert listed(owner="none") == ["Unassigned"]
    assert listed(source="site") == ["Mine"]
    assert listed(status="open", stage=stages["S1"].pk) == ["Unassigned", "Mine"]
    assert listed(status="won") == []
    today = timezone.localdate()
    assert listed(created_from=today, created_to=today) == ["Unassigned", "Mine"]
    assert listed(created_to=today - datetime.timedelta(days=1)) == []


def test_bad_filters_are_400_by_field(masha_client, deals):
    response = masha_client.get(
        "/api/v1/deals/", {"status": "maybe", "created_from": "yesterday", "owner": "x"}
    )
    assert response.status_code == 400
    assert response.json()["fields"] == {
        "status": '"maybe" is not a valid choice.',
        "owner": "This value does not match the required pattern.",
        "created_from": "Date has wrong format. Use one of these formats instead: YYYY-MM-DD.",
    }


def test_cursor_pagination_walks_every_deal_once(make_client, sales_admin, funnel, everything):
    for n in range(7):
        DealFactory(funnel=funnel, title=f"D{n}")
    client = make_client(scopes=everything, user=sales_admin)
    seen, url = [], "/api/v1/deals/?page_size=3"
    while url:
        body = client.get(url).json()
        seen += [deal["title"] for deal in body["results"]]
        url = body["next"]
    assert seen == [f"D{n}" for n in reversed(range(7))]


def test_retrieve_renders_the_deal(masha_client, deals, manager, stages):
    deal = deals["mine"]
    body = masha_client.get(f"/api/v1/deals/{deal.pk}/").json()
    assert {k: body[k] for k in ("id", "title", "status", "owner", "stage", "stage_name")} == {
        "id": deal.pk,
        "title": "Mine",
        "status": "open",
        "owner": manager.pk,
        "stage": stages["S1"].pk,
        "stage_name": "S1",
    }
    assert body["version"] == 1


def test_create_and_update(masha_client, funnel, manager):
    response = masha_client.post(
        "/api/v1/deals/",
        {"funnel": funnel.pk, "title": "New", "owner": manager.pk, "amount": "10.50"},
        format="json",
    )
    assert response.status_code == 201
    deal_id = response.json()["id"]
    assert (response.json()["amount"], response.json()["owner"]) == ("10.50", manager.pk)

    response = masha_client.patch(
        f"/api/v1/deals/{deal_id}/",
        {"title": "Renamed", "contact_phone": "+7 900 000 00 00", "expected_version": 1},
        format="json",
    )
    assert response.status_code == 200
    assert (response.json()["title"], response.json()["contact"]["phone"]) == (
        "Renamed",
        "+7 900 000 00 00",
    )


def test_a_manager_cannot_create_a_deal_for_someone_else(masha_client, funnel, other_manager):
    response = masha_client.post(
        "/api/v1/deals/",
        {"funnel": funnel.pk, "title": "X", "owner": other_manager.pk},
        format="json",
    )
    assert response.status_code == 403
    assert response.json() == {
        "code": "forbidden",
        "detail": "You cannot change this deal: it belongs to another manager.",
        "fields": {},
    }


def test_actions_call_the_service_functions(masha_client, deals, stages, funnel):
    deal = deals["mine"]
    url = f"/api/v1/deals/{deal.pk}"
    moved = masha_client.post(f"{url}/move/", {"stage": stages["S3"].pk}, format="json")
    assert (moved.status_code, moved.json()["stage_name"]) == (200, "S3")
    later = (timezone.now() + datetime.timedelta(days=3)).isoformat()
    postponed = masha_client.post(f"{url}/postpone/", {"next_contact_at": later}, format="json")
    assert postponed.json()["status"] == "postponed"
    reopened = masha_client.post(f"{url}/reopen/", {"comment": "back"}, format="json")
    assert reopened.json()["status"] == "open"
    reason = funnel.loss_reasons.get(name="Spam")
    lost = masha_client.post(f"{url}/lose/", {"loss_reason": reason.pk}, format="json")
    assert (lost.json()["status"], lost.json()["loss_reason"]) == ("lost", reason.pk)
    masha_client.post(f"{url}/reopen/", {}, format="json")
    won = masha_client.post(f"{url}/win/", {}, format="json")
    assert won.json()["status"] == "won"

    history = masha_client.get(f"{url}/history/").json()
    assert [(c["from_stage"], c["to_stage"]) for c in history["stage_changes"]] == [
        (None, stages["S1"].pk),
        (stages["S1"].pk, stages["S3"].pk),
    ]
    assert [(c["from_status"], c["to_status"]) for c in history["status_changes"]] == [
        ("open", "postponed"),
        ("postponed", "open"),
        ("open", "lost"),
        ("lost", "open"),
        ("open", "won"),
    ]


def test_assign(make_client, head, deals, manager, everything):
    client = make_client(scopes=everything, user=head)
    response = client.post(
        f"/api/v1/deals/{deals['free'].pk}/assign/", {"owner": manager.pk}, format="json"
    )
    assert (response.status_code, response.json()["owner"]) == (200, manager.pk)


def test_tasks_and_notes(masha_client, deals, manager):
    url = f"/api/v1/deals/{deals['mine'].pk}"
    due = (timezone.now() + datetime.timedelta(hours=1)).isoformat()
    task = masha_client.post(f"{url}/tasks/", {"title": "Call", "due_at": due}, format="json")
    assert (task.status_code, task.json()["assignee"]) == (201, manager.pk)
    note = masha_client.post(f"{url}/notes/", {"text": "Spoke to him"}, format="json")
    assert (note.status_code, note.json()["author"]) == (201, manager.pk)
    assert [t["title"] for t in masha_client.get(f"{url}/tasks/").json()] == ["Call"]
    assert [n["text"] for n in masha_client.get(f"{url}/notes/").json()] == ["Spoke to him"]


@pytest.mark.parametrize(
    ("action", "body", "status", "error"),
    [
        (
            "lose",
            {"loss_reason": 999999},
            400,
            {
                "code": "invalid",
                "detail": "Choose one of the funnel's current loss reasons.",
                "fields": {"loss_reason": "This reason is not available for this funnel."},
            },
        ),
        (
            "lose",
            {},
            400,
            {
                "code": "invalid",
                "detail": "The request has errors: fix the marked fields.",
                "fields": {"loss_reason": "This field is required."},
            },
        ),
        (
            "win",
            {"expected_version": 7},
            409,
            {
                "code": "conflict",
                "detail": "Someone changed this deal while you were looking at it. "
                "Reload it and try again.",
                "fields": {},
            },
        ),
        (
            "postpone",
            {"next_contact_at": "2000-01-01T00:00:00Z"},
            400,
            {
                "code": "invalid",
                "detail": "The next contact must be in the future.",
                "fields": {"next_contact_at": "Choose a later date."},
            },
        ),
        (
            "move",
            {"stage": 999999},
            400,
            {"code": "invalid", "detail": "No such stage.", "fields": {"stage": "No such stage."}},
        ),
        (
            "reopen",
            {},
            400,
            {"code": "invalid", "detail": "The deal is already open.", "fields": {}},
        ),
    ],
)
def test_domain_errors_map_to_http(masha_client, deals, action, body, status, error):
    deal = deals["mine"]
    with nothing_changes(deal):
        response = masha_client.post(f"/api/v1/deals/{deal.pk}/{action}/", body, format="json")
    assert (response.status_code, response.json()) == (status, error)


def test_a_missing_required_field_names_it(make_client, manager, everything):
    from tests.factories import FunnelFactory

    funnel = FunnelFactory(
        name="Strict",
        members=[manager],
        stages=["S1", {"name": "S2", "required_fields": ["amount"]}],
    )
    deal = DealFactory(funnel=funnel, owner=manager)
    client = make_client(scopes=everything, user=manager)
    response = client.post(
        f"/api/v1/deals/{deal.pk}/move/",
        {"stage": funnel.stages.get(name="S2").pk},
        format="json",
    )
    assert (response.status_code, response.json()["fields"]) == (
        400,
        {"amount": "Required by the stage “S2”."},
    )
    assert Deal.objects.get(pk=deal.pk).status == DealStatus.OPEN


def test_an_integration_key_sees_only_its_funnel(make_client, funnel, deals, manager):
    from tests.factories import FunnelFactory

    other = DealFactory(funnel=FunnelFactory(name="B2C", members=[manager]), title="Other")
    client = make_client(scopes=["deals:read"], funnel=funnel)
    assert sorted(titles(client.get("/api/v1/deals/"))) == ["Mine", "Petya's", "Unassigned"]
    assert client.get(f"/api/v1/deals/{other.pk}/").status_code == 404


def test_the_list_takes_a_fixed_number_of_queries(
    masha_client, funnel, manager, django_assert_max_num_queries
):
    for n in range(20):
        DealFactory(funnel=funnel, owner=manager, title=f"D{n}", values={"contact_name": "X"})
    with django_assert_max_num_queries(8):
        response = masha_client.get("/api/v1/deals/")
    assert len(response.json()["results"]) == 20
