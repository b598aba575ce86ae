"""The funnels API (write): funnels, stages, loss reasons and custom fields, through
``funnels.services``, for the people the settings pages let in."""

import pytest
from rest_framework.test import APIClient

from funnels.models import CustomField, Funnel, LossReason, Stage, TaskTemplate
from tests.factories import FunnelFactory

pytestmark = pytest.mark.django_db

WRITE = ["funnels:read", "funnels:write"]
NEW_FUNNEL = {
    "name": "B2C",
    "stages": [
        {"name": "Lead"},
        {
            "name": "Offer",
            "probability": 40,
            "rotting_days": 7,
            "target_conversion": "35.50",
            "required_fields": ["amount"],
            "tasks": [{"title": "Call back", "due_in_minutes": 30}],
        },
    ],
    "currency": "EUR",
    "target_response_minutes": 5,
}


@pytest.fixture
def admin_client(make_client, sales_admin):
    return make_client(scopes=WRITE, user=sales_admin)


def stage_rows(funnel) -> list[tuple]:
    return list(funnel.stages.order_by("position").values_list("id", "name", "position"))


# ---------------------------------------------------------------- funnels


def test_an_administrator_creates_a_funnel_with_stages_tasks_and_members(admin_client, manager):
    response = admin_client.post(
        "/api/v1/funnels/", {**NEW_FUNNEL, "members": [manager.pk]}, format="json"
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    funnel = Funnel.objects.get(name="B2C")
    assert body["id"] == funnel.pk
    assert (body["currency"], body["target_response_minutes"], body["is_active"]) == (
        "EUR",
        5,
        True,
    )
    assert [
        (s["name"], s["position"], s["probability"], s["rotting_days"], s["target_conversion"])
        for s in body["stages"]
    ] == [("Lead", 0, 0, None, None), ("Offer", 1, 40, 7, "35.50")]
    assert body["stages"][1]["required_fields"] == ["amount"]
    assert body["stages"][1]["task_templates"] == [{"title": "Call back", "due_in_minutes": 30}]
    # funnel_create gave it the standard loss reasons.
    assert [r["name"] for r in body["loss_reasons"]][-1] == "Other"
    assert len(body["loss_reasons"]) == 6
    assert list(funnel.members.all()) == [manager]
    assert list(TaskTemplate.objects.values_list("stage__name", "title", "due_in_minutes")) == [
        ("Offer", "Call back", 30)
    ]


def test_a_head_of_sales_may_change_funnels_as_in_the_settings_pages(make_client, head):
    client = make_client(scopes=WRITE, user=head)

    response = client.post("/api/v1/funnels/", NEW_FUNNEL, format="json")

    assert response.status_code == 201, response.json()


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({**NEW_FUNNEL, "name": " "}, {"name": "Enter a name."}),
        ({**NEW_FUNNEL, "name": "B2B"}, {"name": "Choose another name."}),
        ({**NEW_FUNNEL, "stages": []}, {"stages": "Add a stage."}),
        (
            {**NEW_FUNNEL, "stages": [{"name": "Lead"}, {"name": "Offer", "probability": 101}]},
            {"stages.1.probability": "Probability is a percentage from 0 to 100."},
        ),
        (
            {**NEW_FUNNEL, "stages": [{"name": "Lead", "required_fields": ["colour"]}]},
            {"stages.0.required_fields": "Unknown fields: colour."},
        ),
        (
            {
                **NEW_FUNNEL,
                "stages": [{"name": "Lead", "tasks": [{"title": "", "due_in_minutes": 5}]}],
            },
            {"stages.0.tasks.0.title": "Enter what the owner must do."},
        ),
        (
            {**NEW_FUNNEL, "stages": [{"name": "Lead", "probability": "often"}]},
            {"stages.0.probability": "A valid integer is required."},
        ),
        (
            {**NEW_FUNNEL, "currency": "euro"},
            {"currency": "Use a three-letter currency code, such as RUB."},
        ),
        ({**NEW_FUNNEL, "members": [987654]}, {"members": "No such users: 987654."}),
        ({"stages": [{"name": "Lead"}]}, {"name": "This field is required."}),
    ],
)
def test_funnel_create_names_each_bad_field_and_creates_nothing(admin_client, funnel, body, fields):
    before = (Funnel.objects.count(), Stage.objects.count(), LossReason.objects.count())

    response = admin_client.post("/api/v1/funnels/", body, format="json")

    assert response.status_code == 400
    assert response.json()["fields"] == fields
    assert (Funnel.objects.count(), Stage.objects.count(), LossReason.objects.count()) == before


def test_a_manager_may_not_change_funnels(make_client, manager, funnel, stages):
    client = make_client(scopes=WRITE, user=manager)
    forbidden = {
        "code": "forbidden",
        "detail": "Only an administrator or a head of sales can change funnel settings.",
        "fields": {},
    }

    responses = [
        client.post("/api/v1/funnels/", NEW_FUNNEL, format="json"),
        client.patch(f"/api/v1/funnels/{funnel.pk}/", {"name": "Mine"}, format="json"),
        client.post(f"/api/v1/funnels/{funnel.pk}/stages/", {"name": "S5"}, format="json"),
        client.patch(
            f"/api/v1/funnels/{funnel.pk}/stages/{stages['S1'].pk}/",
            {"name": "Mine"},
            format="json",
        ),
        client.post(f"/api/v1/funnels/{funnel.pk}/loss-reasons/", {"name": "X"}, format="json"),
    ]

    assert [(r.status_code, r.json()) for r in responses] == [(403, forbidden)] * 5
    assert (Funnel.objects.count(), funnel.stages.count(), funnel.loss_reasons.count()) == (
        1,
        4,
        6,
    )
    assert Funnel.objects.get().name == "B2B"


def test_writing_needs_the_funnels_write_scope(make_client, sales_admin, funnel):
    client = make_client(scopes=["funnels:read"], user=sales_admin)

    response = client.patch(f"/api/v1/funnels/{funnel.pk}/", {"name": "X"}, format="json")

    assert response.status_code == 403
    assert response.json()["detail"] == "This API key's scopes do not allow this request."
    assert client.get(f"/api/v1/funnels/{funnel.pk}/").status_code == 200


def test_a_browser_session_of_an_administrator_may_write(sales_admin, funnel):
    client = APIClient()
    client.force_login(sales_admin)

    response = client.patch(f"/api/v1/funnels/{funnel.pk}/", {"currency": "USD"}, format="json")

    assert response.status_code == 200
    assert Funnel.objects.get(pk=funnel.pk).currency == "USD"


def test_an_integration_key_with_a_funnel_changes_that_funnel_only(make_client, funnel):
    other = FunnelFactory(name="Retail")
    client = make_client(scopes=WRITE, funnel=funnel)

    created = client.post("/api/v1/funnels/", NEW_FUNNEL, format="json")
    foreign = client.patch(f"/api/v1/funnels/{other.pk}/", {"name": "Mine"}, format="json")
    own = client.patch(f"/api/v1/funnels/{funnel.pk}/", {"name": "B2B Moscow"}, format="json")

    assert (created.status_code, created.json()["detail"]) == (
        403,
        "This key works only in its own funnel.",
    )
    assert foreign.status_code == 404
    assert own.status_code == 200
    assert sorted(Funnel.objects.values_list("name", flat=True)) == ["B2B Moscow", "Retail"]


def test_funnel_update_changes_the_given_settings_and_members(
    admin_client, funnel, manager, outsider
):
    response = admin_client.patch(
        f"/api/v1/funnels/{funnel.pk}/",
        {"name": "B2B Moscow", "is_active": False, "members": [outsider.pk]},
        format="json",
    )

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["name"], body["is_active"], body["currency"]) == ("B2B Moscow", False, "RUB")
    assert list(Funnel.objects.get(pk=funnel.pk).members.all()) == [outsider]


def test_funnel_update_names_the_bad_field_and_changes_nothing(admin_client, funnel):
    FunnelFactory(name="Retail")

    response = admin_client.patch(
        f"/api/v1/funnels/{funnel.pk}/",
        {"name": "Retail", "is_active": False},
        format="json",
    )

    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid",
        "detail": "A funnel named “Retail” already exists.",
        "fields": {"name": "Choose another name."},
    }
    assert Funnel.objects.filter(pk=funnel.pk).values_list("name", "is_active").get() == (
        "B2B",
        True,
    )
    assert admin_client.patch("/api/v1/funnels/987654/", {}, format="json").status_code == 404


# ---------------------------------------------------------------- stages


def test_a_stage_is_added_at_the_end_with_its_tasks(admin_client, funnel):
    response = admin_client.post(
        f"/api/v1/funnels/{funnel.pk}/stages/",
        {"name": "S5", "probability": 90, "tasks": [{"title": "Invoice", "due_in_minutes": 60}]},
        format="json",
    )

    assert response.status_code == 201, response.json()
    stage = Stage.objects.get(funnel=funnel, name="S5")
    assert response.json() == {
        "id": stage.pk,
        "name": "S5",
        "position": 4,
        "probability": 90,
        "rotting_days": None,
        "target_conversion": None,
        "required_fields": [],
        "task_templates": [{"title": "Invoice", "due_in_minutes": 60}],
    }


def test_a_stage_update_changes_only_the_given_settings(admin_client, funnel, stages):
    stage = stages["S2"]

    response = admin_client.patch(
        f"/api/v1/funnels/{funnel.pk}/stages/{stage.pk}/",
        {"rotting_days": 3, "required_fields": ["amount"]},
        format="json",
    )

    assert response.status_code == 200, response.json()
    assert Stage.objects.filter(pk=stage.pk).values_list(
        "name", "probability", "rotting_days", "required_fields"
    ).get() == ("S2", 0, 3, ["amount"])


def test_a_stage_update_names_the_bad_field_and_changes_nothing(admin_client, funnel, stages):
    stage = stages["S2"]

    response = admin_client.patch(
        f"/api/v1/funnels/{funnel.pk}/stages/{stage.pk}/",
        {"name": "", "rotting_days": -2},
        format="json",
    )

    assert response.status_code == 400
    assert response.json()["fields"] == {
        "name": "Enter a stage name.",
        "rotting_days": "Enter a whole number of days, 0 or more.",
    }
    assert Stage.objects.filter(pk=stage.pk).values_list("name", "rotting_days").get() == (
        "S2",
        None,
    )


def test_a_stage_of_another_funnel_is_not_found(admin_client, funnel):
    other = FunnelFactory(name="Retail")

    response = admin_client.patch(
        f"/api/v1/funnels/{funnel.pk}/stages/{other.first_stage().pk}/",
        {"name": "Mine"},
        format="json",
    )

    assert response.status_code == 404
    assert other.first_stage().name == "S1"


def test_stages_are_reordered_through_the_service(admin_client, funnel, stages):
    order = [stages[name].pk for name in ("S1", "S3", "S2", "S4")]

    response = admin_client.post(
        f"/api/v1/funnels/{funnel.pk}/stages/reorder/", {"stage_ids": order}, format="json"
    )

    assert response.status_code == 200, response.json()
    assert [s["id"] for s in response.json()["stages"]] == order
    assert [row[0] for row in stage_rows(funnel)] == order


def test_a_reorder_must_name_every_stage_once(admin_client, funnel, stages):
    before = stage_rows(funnel)

    response = admin_client.post(
        f"/api/v1/funnels/{funnel.pk}/stages/reorder/",
        {"stage_ids": [stages["S1"].pk, stages["S2"].pk]},
        format="json",
    )

    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid",
        "detail": "Give every stage of the funnel exactly once to reorder them.",
        "fields": {"stage_ids": "List each of the funnel's stage ids once."},
    }
    assert stage_rows(funnel) == before


# ---------------------------------------------------------------- loss reasons


def test_a_loss_reason_is_added_renamed_and_retired_never_deleted(admin_client, funnel):
    added = admin_client.post(
        f"/api/v1/funnels/{funnel.pk}/loss-reasons/",
        {"name": "Too expensive", "requires_comment": True},
        format="json",
    )
    assert added.status_code == 201, added.json()
    reason_id = added.json()["id"]
    assert added.json() == {
        "id": reason_id,
        "name": "Too expensive",
        "is_active": True,
        "requires_comment": True,
    }
    url = f"/api/v1/funnels/{funnel.pk}/loss-reasons/{reason_id}/"

    retired = admin_client.patch(url, {"name": "Price", "is_active": False}, format="json")
    deleted = admin_client.delete(url)

    assert retired.status_code == 200
    assert retired.json() == {
        "id": reason_id,
        "name": "Price",
        "is_active": False,
        "requires_comment": True,
    }
    assert deleted.status_code == 405
    assert LossReason.objects.filter(pk=reason_id).values_list("name", "is_active").get() == (
        "Price",
        False,
    )


def test_a_loss_reason_name_is_unique_in_its_funnel(admin_client, funnel):
    response = admin_client.post(
        f"/api/v1/funnels/{funnel.pk}/loss-reasons/", {"name": "Spam"}, format="json"
    )

    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid",
        "detail": "The funnel already has the loss reason “Spam”.",
        "fields": {"name": "Choose another name."},
    }
    assert funnel.loss_reasons.count() == 6


# ---------------------------------------------------------------- custom fields


def test_a_custom_field_is_added_and_its_label_and_choices_changed(admin_client, funnel):
    added = admin_client.post(
        f"/api/v1/funnels/{funnel.pk}/custom-fields/",
        {"key": "size", "label": "Size", "type": "choice", "choices": ["S", "M"]},
        format="json",
    )
    changed = admin_client.patch(
        f"/api/v1/funnels/{funnel.pk}/custom-fields/size/",
        {"label": "Box size", "choices": ["S", "M", "L"]},
        format="json",
    )

    assert added.status_code == 201, added.json()
    assert changed.status_code == 200, changed.json()
    assert changed.json() == {
        "key": "size",
        "label": "Box size",
        "type": "choice",
        "choices": ["S", "M", "L"],
    }
    assert list(CustomField.objects.values_list("key", "label", "type", "choices")) == [
        ("size", "Box size", "choice", ["S", "M", "L"])
    ]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (
            {"key": "amount", "label": "Amount", "type": "number"},
            {"key": "This key is taken by a built-in deal field."},
        ),
        (
            {"key": "size", "label": "Size", "type": "choice"},
            {"choices": "A choice field needs at least one choice."},
        ),
        (
            {"key": "colour", "label": "Colour", "type": "colour"},
            {"type": '"colour" is not a valid choice.'},
        ),
        (
            {"key": "not a slug", "label": "", "type": "text"},
            {
                "key": "Enter a valid “slug” consisting of letters, numbers, underscores or "
                "hyphens.",
                "label": "This field cannot be blank.",
            },
        ),
    ],
)
def test_a_custom_field_names_each_bad_field(admin_client, funnel, body, fields):
    response = admin_client.post(f"/api/v1/funnels/{funnel.pk}/custom-fields/", body, format="json")

    assert response.status_code == 400
    assert response.json()["fields"] == fields
    assert CustomField.objects.count() == 0


def test_an_unknown_custom_field_is_not_found(admin_client, funnel):
    response = admin_client.patch(
        f"/api/v1/funnels/{funnel.pk}/custom-fields/budget/", {"label": "X"}, format="json"
    )

    assert response.status_code == 404
    assert response.json()["detail"] == "The funnel has no custom field “budget”."
