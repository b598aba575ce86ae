"""The funnels API (read) and the analytics API, with a head's owner scope."""

import datetime

import pytest

from analytics.models import FunnelSnapshot, SnapshotStatus
from analytics.services import snapshot_ensure
from analytics.types import FunnelQuery
from tests.factories import TeamFactory, UserFactory
from tests.story import DealStory

pytestmark = pytest.mark.django_db


def test_a_funnel_with_stages_reasons_and_custom_fields(make_client, funnel, manager, head):
    from funnels.services import custom_field_add

    custom_field_add(actor=head, funnel=funnel, key="budget", label="Budget", type="number")
    client = make_client(scopes=["funnels:read"], user=manager)

    listed = client.get("/api/v1/funnels/")
    detail = client.get(f"/api/v1/funnels/{funnel.pk}/")

    assert listed.status_code == detail.status_code == 200
    assert listed.json() == [detail.json()]
    body = detail.json()
    assert [s["name"] for s in body["stages"]] == ["S1", "S2", "S3", "S4"]
    assert [r["name"] for r in body["loss_reasons"]][-1] == "Other"
    assert body["loss_reasons"][-1]["requires_comment"] is True
    assert body["custom_fields"] == [
        {"key": "budget", "label": "Budget", "type": "number", "choices": []}
    ]


def test_a_manager_sees_only_his_funnels(make_client, funnel, outsider):
    client = make_client(scopes=["funnels:read"], user=outsider)
    assert client.get("/api/v1/funnels/").json() == []
    assert client.get(f"/api/v1/funnels/{funnel.pk}/").status_code == 404


@pytest.fixture
def head_client(make_client, head):
    return make_client(scopes=["analytics:read"], user=head)


def test_the_report_takes_every_parameter_of_funnel_report(head_client, funnel, manager):
    DealStory(funnel, owner=manager).enters("S1", source="site").moves_to("S3").won()
    DealStory(funnel, owner=manager).enters("S1", source="call")

    response = head_client.get(
        f"/api/v1/analytics/funnels/{funnel.pk}/report/",
        {
            "mode": "cohort",
            "from": "2025-03-01",
            "to": "2025-03-31",
            "window": 30,
            "group_by": "owner",
            "filter": ["source=site", "source=call"],
        },
    )

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["query"] == {
        "funnel_id": funnel.pk,
        "date_from": "2025-03-01",
        "date_to": "2025-03-31",
        "mode": "cohort",
        "window_days": 30,
        "group_by": "owner",
        # A head's report covers himself and his team, and its query says so.
        "filters": {"owner": ["head", "masha", "petya"], "source": ["call", "site"]},
    }
    assert [(s["name"], s["count"]) for s in body["steps"]] == [
        ("S1", 2),
        ("S2", 1),
        ("S3", 1),
        ("S4", 1),  # a won deal reached every stage
        ("Won", 1),
    ]
    assert body["overall_conversion"] == 0.5
    assert [g["key"] for g in body["groups"]] == ["masha"]


def test_report_parameters_are_checked(head_client, funnel):
    response = head_client.get(
        f"/api/v1/analytics/funnels/{funnel.pk}/report/",
        {"mode": "weekly", "window": 0, "from": "2025-04-01", "to": "2025-03-01"},
    )
    assert response.status_code == 400
    assert response.json()["fields"] == {
        "mode": '"weekly" is not a valid choice.',
        "window": "Ensure this value is greater than or equal to 1.",
    }
    response = head_client.get(
        f"/api/v1/analytics/funnels/{funnel.pk}/report/",
        {"from": "2025-04-01", "to": "2025-03-01", "filter": "colour=red"},
    )
    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"date_from", "filters"}


def test_managers_get_no_reports(make_client, manager, funnel):
    client = make_client(scopes=["analytics:read"], user=manager)
    response = client.get(f"/api/v1/analytics/funnels/{funnel.pk}/report/")
    assert (response.status_code, response.json()["code"]) == (403, "forbidden")


def test_a_large_report_is_queued_once_however_often_it_is_polled(
    head_client, funnel, manager, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr("analytics.services.DIRECT_REPORT_MAX_DEALS", -1)  # all too large
    DealStory(funnel, owner=manager).enters("S1").moves_to("S2").won()
    url = f"/api/v1/analytics/funnels/{funnel.pk}/report/"
    params = {"from": "2025-03-01", "to": "2025-03-31"}

    with django_capture_on_commit_callbacks() as first:
        queued = head_client.get(url, params)
    with django_capture_on_commit_callbacks() as polled:
        again = head_client.get(url, params)

    assert (queued.status_code, again.status_code) == (202, 202)
    assert queued.json()["snapshot"]["status"] == again.json()["snapshot"]["status"] == "queued"
    assert (len(first), polled) == (1, [])  # sent to the workers once, not on each poll
    first[0]()  # the worker runs it
    done = head_client.get(url, params)
    assert done.status_code == 202
    assert done.json()["snapshot"]["status"] == "done"
    snapshot = FunnelSnapshot.objects.get(label="ad hoc")
    assert [s["count"] for s in snapshot.result["steps"]] == [1, 1, 1, 1, 1]


def test_recompute_returns_snapshots_to_poll(
    head_client, make_client, sales_admin, funnel, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = head_client.post(
            f"/api/v1/analytics/funnels/{funnel.pk}/recompute/",
            {"current_only": True},
            format="json",
        )

    assert response.status_code == 202
    ids = response.json()["snapshot_ids"]
    assert ids and set(ids) == set(
        FunnelSnapshot.objects.filter(funnel=funnel).values_list("pk", flat=True)
    )
    # Celery runs eagerly in the tests: the snapshots are done once the request commits.
    listed = head_client.get("/api/v1/analytics/snapshots/", {"funnel": funnel.pk}).json()
    assert {s["status"] for s in listed} == {SnapshotStatus.DONE}
    assert "result" not in listed[0]
    everyones = FunnelSnapshot.objects.filter(funnel=funnel, params__filters={}).first()
    # The figures of every owner are for administrators: a head polls their status only.
    assert head_client.get(f"/api/v1/analytics/snapshots/{everyones.pk}/").status_code == 403
    admin_client = make_client(scopes=["analytics:read"], user=sales_admin)
    detail = admin_client.get(f"/api/v1/analytics/snapshots/{everyones.pk}/").json()
    assert detail["result"]["funnel"] == "B2B"
    assert head_client.get("/api/v1/analytics/snapshots/999999/").status_code == 404


# ---------------------------------------------------------------- a head's owner scope


@pytest.fixture
def kazan_manager(funnel):
    """A manager of another head's team who works the same funnel."""
    other_head = UserFactory(username="head2", role="head")
    vasya = UserFactory(username="vasya", team=TeamFactory(name="Kazan", head=other_head))
    funnel.members.add(vasya)
    return vasya


@pytest.fixture
def two_teams_deals(funnel, manager, kazan_manager):
    DealStory(funnel, owner=manager).enters("S1").moves_to("S2").won()
    DealStory(funnel, owner=kazan_manager).enters("S1")
    DealStory(funnel, owner=kazan_manager).enters("S1").moves_to("S3")


MARCH = {"from": "2025-03-01", "to": "2025-03-31", "group_by": "owner"}


def _report(client, funnel, **params):
    return client.get(f"/api/v1/analytics/funnels/{funnel.pk}/report/", {**MARCH, **params})


def test_a_head_without_an_owner_filter_gets_his_teams_figures(
    head_client, funnel, two_teams_deals
):
    response = _report(head_client, funnel)

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["query"]["filters"] == {"owner": ["head", "masha", "petya"]}
    assert [(s["name"], s["count"]) for s in body["steps"]] == [
        ("S1", 1),
        ("S2", 1),
        ("S3", 1),
        ("S4", 1),
        ("Won", 1),
    ]
    assert [g["key"] for g in body["groups"]] == ["masha"]


def test_an_administrator_and_an_integration_key_get_everyones_figures(
    make_client, sales_admin, funnel, two_teams_deals
):
    for client in (
        make_client(scopes=["analytics:read"], user=sales_admin),
        make_client(scopes=["analytics:read"]),
    ):
        body = _report(client, funnel).json()

        assert body["query"]["filters"] == {}
        assert [(s["name"], s["count"]) for s in body["steps"]][:3] == [
            ("S1", 3),
            ("S2", 2),
            ("S3", 2),
        ]
        assert [g["key"] for g in body["groups"]] == ["masha", "vasya"]


def test_a_head_asking_for_an_owner_outside_his_teams_gets_403(
    head_client, funnel, two_teams_deals
):
    response = _report(head_client, funnel, filter=["owner=masha", "owner=vasya"])

    assert response.status_code == 403
    assert response.json() == {
        "code": "forbidden",
        "detail": "You see the figures of your own teams only; not in them: vasya.",
        "fields": {"filter": "Choose among: head, masha, petya."},
    }


def test_a_head_may_narrow_his_report_to_one_of_his_people(head_client, funnel, two_teams_deals):
    response = _report(head_client, funnel, filter="owner=masha")

    assert response.status_code == 200
    assert response.json()["query"]["filters"] == {"owner": ["masha"]}
    assert response.json()["steps"][0]["count"] == 1


def _snapshot(funnel, owners: list[str] | None) -> FunnelSnapshot:
    query = FunnelQuery.build(
        funnel_id=funnel.pk,
        date_from=datetime.date(2025, 3, 1),
        date_to=datetime.date(2025, 3, 31),
        filters={"owner": owners} if owners else {},
    )
    return snapshot_ensure(query=query, label="ad hoc")


def test_a_head_reads_only_snapshots_narrowed_to_his_people(
    head_client, make_client, sales_admin, funnel, kazan_manager
):
    his = _snapshot(funnel, ["head", "masha", "petya"])
    one_of_his = _snapshot(funnel, ["masha"])
    everyones = _snapshot(funnel, None)
    mixed = _snapshot(funnel, ["masha", "vasya"])
    admin_client = make_client(scopes=["analytics:read"], user=sales_admin)

    assert head_client.get(f"/api/v1/analytics/snapshots/{his.pk}/").status_code == 200
    assert head_client.get(f"/api/v1/analytics/snapshots/{one_of_his.pk}/").status_code == 200
    for snapshot in (everyones, mixed):
        response = head_client.get(f"/api/v1/analytics/snapshots/{snapshot.pk}/")
        assert response.status_code == 403
        assert response.json() == {
            "code": "forbidden",
            "detail": "This snapshot holds figures of people outside your teams. Poll its "
            "status in the snapshot list, or ask for the report: it is narrowed to your teams.",
            "fields": {},
        }
        assert admin_client.get(f"/api/v1/analytics/snapshots/{snapshot.pk}/").status_code == 200
    # The list carries no figures: a head sees every snapshot's status there.
    listed = head_client.get("/api/v1/analytics/snapshots/", {"funnel": funnel.pk}).json()
    assert {s["id"] for s in listed} == {his.pk, one_of_his.pk, everyones.pk, mixed.pk}
