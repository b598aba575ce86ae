"""The funnels API (read) and the analytics API."""

import pytest

from analytics.models import FunnelSnapshot, SnapshotStatus
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
        "filters": {"source": ["call", "site"]},
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


def test_recompute_returns_snapshots_to_poll(
    head_client, funnel, django_capture_on_commit_callbacks
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
    detail = head_client.get(f"/api/v1/analytics/snapshots/{ids[0]}/").json()
    assert detail["result"]["funnel"] == "B2B"
    assert head_client.get("/api/v1/analytics/snapshots/999999/").status_code == 404
