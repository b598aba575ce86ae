"""POST /api/v1/leads/: status codes, error shapes, idempotency over HTTP."""

import pytest
from django.test import override_settings

from deals.models import Deal, IntakeIdempotencyRecord
from tests.story import row_counts

pytestmark = pytest.mark.django_db

URL = "/api/v1/leads/"
IVAN = {"contact": {"name": "Ivan", "phone": "+7 900 123 45 67"}, "source": "site"}


def test_one_lead_is_created_with_201(leads_client, manager):
    response = leads_client.post(URL, IVAN, format="json")

    deal = Deal.objects.get()
    assert response.status_code == 201
    assert response.json() == {
        "index": 0,
        "status": "created",
        "deal_id": deal.pk,
        "owner_id": manager.pk,
        "external_id": None,
        "replayed": False,
        "error": None,
    }
    assert "Idempotent-Replayed" not in response.headers


def test_a_duplicate_lead_is_attached_with_200(leads_client):
    first = leads_client.post(URL, IVAN, format="json").json()
    response = leads_client.post(
        URL, {"contact": {"phone": "8 900 123-45-67"}, "comment": "again"}, format="json"
    )
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["deal_id"]) == (
        "attached",
        first["deal_id"],
    )


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"contact": "Give the client's name, phone, email or company."}),
        (
            {"contact": {"phone": "12"}},
            {"contact.phone": "Enter a phone number of 7 to 15 digits."},
        ),
        ({"contact": {"email": "nope"}}, {"contact.email": "Enter a valid email address."}),
        (
            {"company": "A", "amount": "-5"},
            {"amount": "Ensure this value is greater than or equal to 0."},
        ),
        ({"company": "A", "amount": "abc"}, {"amount": "A valid number is required."}),
        ({"company": "A", "temperature": "hot"}, {"temperature": '"hot" is not a valid choice.'}),
        ({"company": "A", "funnel": "x"}, {"funnel": "A valid integer is required."}),
        (
            {"company": "A", "title": "x" * 256},
            {"title": "Ensure this field has no more than 255 characters."},
        ),
        (
            {"company": "A", "utm": {"source": 5 * "x" * 50}},
            {"utm.source": "Ensure this field has no more than 200 characters."},
        ),
        (
            {"company": "A", "custom_fields": {"budget": 1}},
            {"custom_fields.budget": "The funnel has no custom field “budget”."},
        ),
        ({"company": "A", "owner_id": 99999}, {"owner_id": "Choose an active user."}),
    ],
)
def test_an_invalid_lead_is_400_naming_each_field_and_nothing_is_stored(leads_client, body, fields):
    counts = row_counts()
    response = leads_client.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert response.json()["fields"] == fields
    assert row_counts() == counts
    assert IntakeIdempotencyRecord.objects.count() == 0


def test_a_body_that_is_not_an_object_is_400(leads_client):
    response = leads_client.post(URL, [IVAN], format="json")
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid",
        "detail": 'Send one lead as an object, or a batch as {"leads": [...]}.',
        "fields": {"non_field_errors": "Expected an object."},
    }


def test_malformed_json_is_400(leads_client):
    response = leads_client.post(URL, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_a_batch_reports_each_lead(leads_client):
    response = leads_client.post(
        URL,
        {"leads": [IVAN, {"contact": {"phone": "1"}}, "text", {"company": "ACME"}]},
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert (body["created"], body["attached"], body["rejected"]) == (2, 0, 2)
    assert [r["status"] for r in body["results"]] == ["created", "rejected", "rejected", "created"]
    assert body["results"][1]["error"] == {
        "code": "invalid",
        "detail": "The lead has errors: fix the marked fields.",
        "fields": {"contact.phone": "Enter a phone number of 7 to 15 digits."},
    }
    assert body["results"][2]["error"]["fields"] == {"non_field_errors": "Expected an object."}
    assert Deal.objects.count() == 2


def test_a_batch_where_nothing_is_created_is_200(leads_client):
    response = leads_client.post(URL, {"leads": [{}]}, format="json")
    assert (response.status_code, response.json()["rejected"]) == (200, 1)


@pytest.mark.parametrize("leads", [[], "x", [IVAN] * 1001])
def test_a_batch_must_hold_1_to_1000_leads(leads_client, leads):
    response = leads_client.post(URL, {"leads": leads}, format="json")
    assert response.status_code == 400
    assert response.json()["fields"] == {"leads": "Send a list of 1 to 1000 leads."}
    assert Deal.objects.count() == 0


def test_a_batch_of_1000_is_taken(leads_client):
    leads = [{"company": f"C{n}", "external_id": f"e{n}"} for n in range(1000)]
    response = leads_client.post(URL, {"leads": leads}, format="json")
    assert (response.status_code, response.json()["created"]) == (201, 1000)
    assert Deal.objects.count() == 1000


def test_a_retry_with_the_same_idempotency_key_returns_the_original(leads_client):
    first = leads_client.post(URL, IVAN, format="json", HTTP_IDEMPOTENCY_KEY="abc-1")
    counts = row_counts()

    retry = leads_client.post(URL, IVAN, format="json", HTTP_IDEMPOTENCY_KEY="abc-1")

    assert (retry.status_code, retry.json()) == (first.status_code, first.json())
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert row_counts() == counts


def test_a_batch_retry_returns_the_original_result(leads_client):
    batch = {"leads": [IVAN, {"company": "ACME"}, {}]}
    first = leads_client.post(URL, batch, format="json", HTTP_IDEMPOTENCY_KEY="b-1")
    retry = leads_client.post(URL, batch, format="json", HTTP_IDEMPOTENCY_KEY="b-1")
    assert (retry.status_code, retry.json()) == (201, first.json())
    assert Deal.objects.count() == 2


def test_an_idempotency_key_reused_with_another_body_is_422(leads_client):
    leads_client.post(URL, IVAN, format="json", HTTP_IDEMPOTENCY_KEY="abc-1")
    response = leads_client.post(
        URL, {"company": "Other"}, format="json", HTTP_IDEMPOTENCY_KEY="abc-1"
    )
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert Deal.objects.count() == 1


def test_an_overlong_idempotency_key_is_400(leads_client):
    response = leads_client.post(URL, IVAN, format="json", HTTP_IDEMPOTENCY_KEY="k" * 256)
    assert response.status_code == 400
    assert response.json()["fields"] == {"Idempotency-Key": "Send 1 to 255 characters."}


def test_a_retry_with_the_same_external_id_returns_the_original(leads_client):
    first = leads_client.post(URL, {**IVAN, "external_id": "f-1"}, format="json").json()
    retry = leads_client.post(URL, {**IVAN, "external_id": "f-1"}, format="json")
    assert retry.status_code == 201
    assert retry.json() == {**first, "replayed": True}
    assert Deal.objects.count() == 1


@override_settings(API_MAX_BODY_BYTES=1000)
def test_a_body_over_the_limit_is_413(leads_client):
    response = leads_client.post(URL, {"leads": [IVAN] * 50}, format="json")
    assert response.status_code == 413
    body = response.json()
    assert (body["code"], body["fields"]) == ("payload_too_large", {})
    assert body["detail"].endswith("bytes; the limit is 1000.")
    assert Deal.objects.count() == 0
