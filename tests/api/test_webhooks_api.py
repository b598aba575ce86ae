"""The webhook subscriptions API: administrators only (or a key with ``webhooks:manage``),
the secret shown once, per-field errors, re-enabling, and the delivery log."""

import datetime
import hashlib
import hmac

import pytest
from django.utils import timezone

from deals import services
from deals.models import WebhookDelivery, WebhookDeliveryStatus, WebhookSubscription
from tests.deals.test_webhooks import receiver  # noqa: F401 (the local HTTP receiver fixture)
from tests.factories import FunnelFactory

pytestmark = pytest.mark.django_db

MANAGE = ["webhooks:manage"]
HOOK = {"url": "https://crm-hooks.example.com/voronka", "events": ["created", "won"]}


@pytest.fixture
def admin_client(make_client, sales_admin):
    return make_client(scopes=MANAGE, user=sales_admin)


def _subscription(**values) -> WebhookSubscription:
    return WebhookSubscription.objects.create(
        **{"url": "https://old.example.com/hook", "secret": "s", "events": ["moved"], **values}
    )


# ---------------------------------------------------------------- create, secret once


def test_create_shows_the_server_made_secret_once(admin_client):
    response = admin_client.post("/api/v1/webhooks/", HOOK, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    subscription = WebhookSubscription.objects.get()
    secret = body.pop("secret")
    assert secret == subscription.secret
    assert secret.startswith("whsec_") and len(secret) == 49
    assert body == {
        "id": subscription.pk,
        "url": "https://crm-hooks.example.com/voronka",
        "events": ["created", "won"],
        "funnel": None,
        "is_active": True,
        "failure_count": 0,
        "disabled_at": None,
        "created_at": body["created_at"],
    }
    listed = admin_client.get("/api/v1/webhooks/")
    detail = admin_client.get(f"/api/v1/webhooks/{subscription.pk}/")
    assert listed.json() == [body]
    assert detail.json() == body
    assert secret not in listed.content.decode() + detail.content.decode()


def test_two_subscriptions_get_different_secrets(admin_client):
    first = admin_client.post("/api/v1/webhooks/", HOOK, format="json").json()
    second = admin_client.post("/api/v1/webhooks/", HOOK, format="json").json()

    assert first["secret"] != second["secret"]


def test_the_returned_secret_verifies_the_posted_events(
    request, admin_client, funnel, django_capture_on_commit_callbacks
):
    hook = request.getfixturevalue("receiver")
    secret = admin_client.post(
        "/api/v1/webhooks/",
        {"url": hook.url, "events": ["created"], "funnel": funnel.pk},
        format="json",
    ).json()["secret"]

    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=funnel, title="Roof")
    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=FunnelFactory(name="Retail"), title="Elsewhere")

    [posted] = hook.requests
    expected = hmac.new(secret.encode(), posted["body"], hashlib.sha256).hexdigest()
    assert posted["headers"]["X-Voronka-Signature"] == f"sha256={expected}"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (
            {"url": "ftp://files.example.com/in", "events": []},
            {
                "url": "Use an http:// or https:// address.",
                "events": "List one or more of: created, moved, won, lost, postponed.",
            },
        ),
        ({**HOOK, "url": "not an address"}, {"url": "Use an http:// or https:// address."}),
        (
            {**HOOK, "url": "https://example.com/" + "x" * 500},
            {"url": "Use an address of at most 500 characters."},
        ),
        (
            {**HOOK, "events": ["created", "exploded"]},
            {"events.1": '"exploded" is not a valid choice.'},
        ),
        ({**HOOK, "funnel": 987654}, {"funnel": "No such funnel."}),
        (
            {"is_active": "maybe"},
            {
                "url": "This field is required.",
                "events": "This field is required.",
                "is_active": "Must be a valid boolean.",
            },
        ),
    ],
)
def test_create_names_each_bad_field_and_creates_nothing(admin_client, funnel, body, fields):
    response = admin_client.post("/api/v1/webhooks/", body, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert response.json()["fields"] == fields
    assert WebhookSubscription.objects.count() == 0


# ---------------------------------------------------------------- who may


@pytest.mark.parametrize("role", ["head", "manager"])
def test_only_administrators_manage_subscriptions(make_client, role, head, manager):
    client = make_client(scopes=MANAGE, user={"head": head, "manager": manager}[role])
    subscription = _subscription()
    forbidden = {
        "code": "forbidden",
        "detail": "Only an administrator can manage webhook subscriptions.",
        "fields": {},
    }

    responses = [
        client.get("/api/v1/webhooks/"),
        client.post("/api/v1/webhooks/", HOOK, format="json"),
        client.get(f"/api/v1/webhooks/{subscription.pk}/"),
        client.patch(f"/api/v1/webhooks/{subscription.pk}/", {"is_active": False}, format="json"),
        client.delete(f"/api/v1/webhooks/{subscription.pk}/"),
        client.get(f"/api/v1/webhooks/{subscription.pk}/deliveries/"),
    ]

    assert [(r.status_code, r.json()) for r in responses] == [(403, forbidden)] * 6
    assert list(WebhookSubscription.objects.values_list("url", "is_active")) == [
        ("https://old.example.com/hook", True)
    ]


@pytest.mark.parametrize("scopes", [["deals:read", "deals:write", "funnels:write"], []])
def test_a_key_needs_the_webhooks_manage_scope(make_client, sales_admin, scopes):
    # An administrator's token without the scope, and an integration key without it.
    client = make_client(scopes=scopes or ["leads:write"], user=sales_admin if scopes else None)

    response = client.post("/api/v1/webhooks/", HOOK, format="json")

    assert response.status_code == 403
    assert response.json()["detail"] == "This API key's scopes do not allow this request."
    assert WebhookSubscription.objects.count() == 0


def test_an_integration_key_with_the_scope_manages_every_funnels_subscriptions(make_client):
    client = make_client(scopes=MANAGE)
    _subscription()

    created = client.post("/api/v1/webhooks/", HOOK, format="json")

    assert created.status_code == 201
    assert len(client.get("/api/v1/webhooks/").json()) == 2


def test_a_key_with_a_funnel_manages_that_funnels_subscriptions_only(make_client, funnel):
    client = make_client(scopes=MANAGE, funnel=funnel)
    everywhere = _subscription()

    created = client.post("/api/v1/webhooks/", HOOK, format="json")
    all_funnels = client.post("/api/v1/webhooks/", {**HOOK, "funnel": None}, format="json")
    moved_away = client.patch(
        f"/api/v1/webhooks/{created.json()['id']}/", {"funnel": None}, format="json"
    )

    assert created.status_code == 201
    assert created.json()["funnel"] == funnel.pk
    assert (all_funnels.status_code, all_funnels.json()["detail"]) == (
        403,
        "This key works only in its own funnel.",
    )
    assert moved_away.status_code == 403
    assert [s["id"] for s in client.get("/api/v1/webhooks/").json()] == [created.json()["id"]]
    assert client.get(f"/api/v1/webhooks/{everywhere.pk}/").status_code == 404
    assert WebhookSubscription.objects.get(pk=created.json()["id"]).funnel == funnel


# ---------------------------------------------------------------- update, disable, delete


def test_update_changes_url_events_and_funnel(admin_client, funnel):
    subscription = _subscription()

    response = admin_client.patch(
        f"/api/v1/webhooks/{subscription.pk}/",
        {"url": "http://10.0.0.5:8080/in", "events": ["lost", "lost", "won"], "funnel": funnel.pk},
        format="json",
    )

    assert response.status_code == 200, response.json()
    assert (response.json()["url"], response.json()["events"], response.json()["funnel"]) == (
        "http://10.0.0.5:8080/in",
        ["lost", "won"],
        funnel.pk,
    )
    assert "secret" not in response.json()
    subscription.refresh_from_db()
    assert (subscription.url, subscription.events, subscription.funnel, subscription.secret) == (
        "http://10.0.0.5:8080/in",
        ["lost", "won"],
        funnel,
        "s",
    )


def test_update_names_the_bad_field_and_changes_nothing(admin_client):
    subscription = _subscription()

    response = admin_client.patch(
        f"/api/v1/webhooks/{subscription.pk}/",
        {"url": "mailto:ops@example.com", "is_active": False},
        format="json",
    )

    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid",
        "detail": "The webhook subscription has errors: fix the marked fields.",
        "fields": {"url": "Use an http:// or https:// address."},
    }
    subscription.refresh_from_db()
    assert (subscription.url, subscription.is_active) == ("https://old.example.com/hook", True)


def test_disabling_stamps_the_time_and_re_enabling_forgets_past_failures(admin_client):
    subscription = _subscription(failure_count=3)
    url = f"/api/v1/webhooks/{subscription.pk}/"

    disabled = admin_client.patch(url, {"is_active": False}, format="json").json()

    assert (disabled["is_active"], disabled["failure_count"]) == (False, 3)
    assert datetime.datetime.fromisoformat(disabled["disabled_at"]) <= timezone.now()
    WebhookSubscription.objects.filter(pk=subscription.pk).update(failure_count=10)

    enabled = admin_client.patch(url, {"is_active": True}, format="json").json()

    assert (enabled["is_active"], enabled["failure_count"], enabled["disabled_at"]) == (
        True,
        0,
        None,
    )
    subscription.refresh_from_db()
    assert (subscription.is_active, subscription.failure_count, subscription.disabled_at) == (
        True,
        0,
        None,
    )


def test_an_active_subscription_keeps_its_failure_count_on_other_changes(admin_client):
    subscription = _subscription(failure_count=2)

    response = admin_client.patch(
        f"/api/v1/webhooks/{subscription.pk}/",
        {"is_active": True, "events": ["won"]},
        format="json",
    )

    assert response.json()["failure_count"] == 2


def test_delete_removes_the_subscription_and_its_log(admin_client):
    subscription = _subscription()
    WebhookDelivery.objects.create(subscription=subscription, event="moved", payload={})
    kept = _subscription(url="https://kept.example.com/")

    response = admin_client.delete(f"/api/v1/webhooks/{subscription.pk}/")

    assert response.status_code == 204
    assert list(WebhookSubscription.objects.values_list("pk", flat=True)) == [kept.pk]
    assert WebhookDelivery.objects.count() == 0
    assert admin_client.delete(f"/api/v1/webhooks/{subscription.pk}/").status_code == 404


# ---------------------------------------------------------------- deliveries


def test_the_delivery_log_lists_attempts_with_response_codes_newest_first(admin_client):
    subscription = _subscription()
    at = timezone.now().replace(microsecond=0)
    delivered = WebhookDelivery.objects.create(
        subscription=subscription,
        event="moved",
        payload={"event": "moved"},
        attempts=1,
        status=WebhookDeliveryStatus.DELIVERED,
        response_code=200,
        created_at=at - datetime.timedelta(minutes=2),
        delivered_at=at - datetime.timedelta(minutes=2),
    )
    failed = WebhookDelivery.objects.create(
        subscription=subscription,
        event="won",
        payload={"event": "won"},
        attempts=6,
        status=WebhookDeliveryStatus.FAILED,
        response_code=500,
        error="HTTP 500: boom",
        created_at=at - datetime.timedelta(minutes=1),
    )
    WebhookDelivery.objects.create(
        subscription=_subscription(url="https://other.example.com/"), event="moved", payload={}
    )

    response = admin_client.get(f"/api/v1/webhooks/{subscription.pk}/deliveries/")

    assert response.status_code == 200
    body = response.json()
    assert (body["next"], body["previous"]) == (None, None)
    assert [
        (d["id"], d["event"], d["status"], d["attempts"], d["response_code"], d["error"])
        for d in body["results"]
    ] == [
        (failed.pk, "won", "failed", 6, 500, "HTTP 500: boom"),
        (delivered.pk, "moved", "delivered", 1, 200, ""),
    ]
    assert body["results"][0]["payload"] == {"event": "won"}
    assert body["results"][0]["delivered_at"] is None
    only_failed = admin_client.get(
        f"/api/v1/webhooks/{subscription.pk}/deliveries/", {"status": "failed"}
    ).json()
    assert [d["id"] for d in only_failed["results"]] == [failed.pk]
    bad = admin_client.get(f"/api/v1/webhooks/{subscription.pk}/deliveries/", {"status": "lost"})
    assert (bad.status_code, bad.json()["fields"]) == (
        400,
        {"status": '"lost" is not a valid choice.'},
    )
    assert admin_client.get("/api/v1/webhooks/987654/deliveries/").status_code == 404
