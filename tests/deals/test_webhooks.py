"""Outbound webhooks: signed deal events posted after commit to a local receiver,
retried with backoff, logged, and disabled after repeated failure."""

import datetime
import hashlib
import hmac
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.test import override_settings
from django.utils import timezone

from crm.errors import InvalidInput
from deals import services
from deals.models import (
    Deal,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookSubscription,
)
from deals.tasks import deliver_webhook
from funnels.models import LossReason
from tests.factories import FunnelFactory

pytestmark = pytest.mark.django_db

SECRET = "s3cret"
ALL_EVENTS = ["created", "moved", "won", "lost", "postponed"]


class Receiver:
    """An HTTP server on a loopback port that records every request and answers
    with the next of ``codes`` (the last one repeats)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.codes = [200]
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                index = min(len(receiver.requests), len(receiver.codes)) - 1
                self.send_response(receiver.codes[index])
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def events(self) -> list[str]:
        return [request["headers"]["X-Voronka-Event"] for request in self.requests]


@pytest.fixture
def receiver():
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def subscription(receiver):
    return WebhookSubscription.objects.create(url=receiver.url, secret=SECRET, events=ALL_EVENTS)


@pytest.fixture
def fast_retries():
    with override_settings(WEBHOOK_RETRY_BASE_SECONDS=0):
        yield


def _closed_port_url() -> str:
    """A loopback URL where nothing listens: the connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_created_event_is_posted_signed_after_commit(
    receiver, subscription, funnel, manager, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        deal = services.deal_create(
            actor=None, funnel=funnel, title="Roof", owner=manager, values={"amount": "1500"}
        )
        assert receiver.requests == []  # nothing leaves before the commit

    assert len(callbacks) == 1
    [request] = receiver.requests
    body = request["body"]
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert request["headers"]["X-Voronka-Signature"] == f"sha256={expected}"
    assert request["headers"]["X-Voronka-Event"] == "created"
    assert request["headers"]["Content-Type"] == "application/json"
    delivery = WebhookDelivery.objects.get()
    assert request["headers"]["X-Voronka-Delivery"] == str(delivery.pk)
    payload = json.loads(body)
    assert datetime.datetime.fromisoformat(payload.pop("occurred_at")) <= timezone.now()
    assert payload == {
        "event": "created",
        "deal": {
            "id": deal.pk,
            "funnel_id": funnel.pk,
            "stage_id": deal.stage_id,
            "stage": "S1",
            "status": "open",
            "title": "Roof",
            "owner": "masha",
            "amount": "1500.00",
            "loss_reason": None,
            "next_contact_at": None,
        },
    }
    assert (delivery.status, delivery.attempts, delivery.response_code, delivery.error) == (
        WebhookDeliveryStatus.DELIVERED,
        1,
        200,
        "",
    )
    assert delivery.delivered_at is not None


def test_a_tampered_body_does_not_verify(
    receiver, subscription, funnel, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=funnel, title="Roof")

    [request] = receiver.requests
    tampered = request["body"].replace(b"Roof", b"Roo!")
    forged = hmac.new(SECRET.encode(), tampered, hashlib.sha256).hexdigest()
    assert request["headers"]["X-Voronka-Signature"] != f"sha256={forged}"


def test_every_deal_event_is_posted(
    receiver, subscription, funnel, stages, django_capture_on_commit_callbacks
):
    reason = LossReason.objects.filter(funnel=funnel, requires_comment=False).first()
    later = timezone.now() + datetime.timedelta(days=3)
    with django_capture_on_commit_callbacks(execute=True):
        won = services.deal_create(actor=None, funnel=funnel, title="A")
        services.deal_move_to_stage(actor=None, deal=won, stage=stages["S2"])
        services.deal_win(actor=None, deal=won)
        lost = services.deal_create(actor=None, funnel=funnel, title="B")
        services.deal_lose(actor=None, deal=lost, loss_reason=reason)
        postponed = services.deal_create(actor=None, funnel=funnel, title="C")
        services.deal_postpone(actor=None, deal=postponed, next_contact_at=later)
        # A new date for a deal already postponed is not an event.
        services.deal_postpone(
            actor=None, deal=postponed, next_contact_at=later + datetime.timedelta(days=1)
        )

    assert receiver.events() == [
        "created",
        "moved",
        "won",
        "created",
        "lost",
        "created",
        "postponed",
    ]
    bodies = [json.loads(request["body"])["deal"] for request in receiver.requests]
    assert (bodies[1]["stage"], bodies[2]["status"]) == ("S2", "won")
    assert (bodies[4]["status"], bodies[4]["loss_reason"]) == ("lost", reason.name)
    assert bodies[6]["next_contact_at"] == later.isoformat()
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"delivered"}


def test_only_matching_active_subscriptions_get_the_event(
    receiver, funnel, django_capture_on_commit_callbacks
):
    other_funnel = FunnelFactory(name="B2C")
    wanted = WebhookSubscription.objects.create(
        url=receiver.url, secret=SECRET, events=["created"], funnel=funnel
    )
    WebhookSubscription.objects.create(url=receiver.url, secret=SECRET, events=["won"])
    WebhookSubscription.objects.create(
        url=receiver.url, secret=SECRET, events=["created"], funnel=other_funnel
    )
    WebhookSubscription.objects.create(
        url=receiver.url, secret=SECRET, events=["created"], is_active=False
    )

    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=funnel, title="Roof")

    assert list(WebhookDelivery.objects.values_list("subscription_id", flat=True)) == [wanted.pk]
    assert receiver.events() == ["created"]


def test_nothing_is_sent_when_the_service_raises(
    receiver, subscription, strict, strict_stages, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        deal = services.deal_create(actor=None, funnel=strict, title="Roof")
    receiver.requests.clear()

    # S2 needs an amount and a budget.
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(InvalidInput),
    ):
        services.deal_move_to_stage(actor=None, deal=deal, stage=strict_stages["S2"])

    assert callbacks == []
    assert receiver.requests == []
    assert list(WebhookDelivery.objects.values_list("event", flat=True)) == ["created"]
    assert Deal.objects.get().stage.name == "S1"


def test_a_failing_receiver_is_retried_then_the_delivery_fails(
    receiver, subscription, funnel, fast_retries, django_capture_on_commit_callbacks
):
    receiver.codes = [500]

    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=funnel, title="Roof")

    assert len(receiver.requests) == 6
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_code) == (
        WebhookDeliveryStatus.FAILED,
        6,
        500,
    )
    assert delivery.error == "HTTP 500: ok"
    assert delivery.delivered_at is None
    subscription.refresh_from_db()
    assert (subscription.failure_count, subscription.is_active, subscription.disabled_at) == (
        1,
        True,
        None,
    )


def test_a_receiver_that_recovers_gets_the_delivery(
    receiver, subscription, funnel, fast_retries, django_capture_on_commit_callbacks
):
    receiver.codes = [503, 502, 200]

    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=funnel, title="Roof")

    delivery = WebhookDelivery.objects.get()
    assert len(receiver.requests) == 3
    assert (delivery.status, delivery.attempts, delivery.response_code, delivery.error) == (
        WebhookDeliveryStatus.DELIVERED,
        3,
        200,
        "",
    )


def test_a_refused_connection_is_retried_and_logged(
    funnel, fast_retries, django_capture_on_commit_callbacks
):
    WebhookSubscription.objects.create(url=_closed_port_url(), secret=SECRET, events=["created"])

    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=funnel, title="Roof")

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_code) == (
        WebhookDeliveryStatus.FAILED,
        6,
        None,
    )
    assert "Connection refused" in delivery.error


@override_settings(
    ADMINS=[("Ops", "ops@example.com")], WEBHOOK_MAX_ATTEMPTS=1, WEBHOOK_RETRY_BASE_SECONDS=0
)
def test_ten_failed_deliveries_in_a_row_disable_the_subscription_and_tell_admins(
    receiver, subscription, funnel, django_capture_on_commit_callbacks, caplog
):
    receiver.codes = [500]

    with django_capture_on_commit_callbacks(execute=True):
        for number in range(9):
            services.deal_create(actor=None, funnel=funnel, title=f"Deal {number}")
    subscription.refresh_from_db()
    assert (subscription.failure_count, subscription.is_active, mail.outbox) == (9, True, [])

    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=funnel, title="Deal 9")
    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=funnel, title="After")

    subscription.refresh_from_db()
    assert (subscription.failure_count, subscription.is_active) == (10, False)
    assert subscription.disabled_at is not None
    assert len(receiver.requests) == 10
    assert WebhookDelivery.objects.count() == 10  # none queued once disabled
    [message] = mail.outbox
    assert message.to == ["ops@example.com"]
    assert f"Webhook subscription {subscription.pk} disabled" in message.subject
    assert receiver.url in message.body
    assert "disabled after 10 failed deliveries in a row" in caplog.text


def test_a_success_resets_the_failure_count(
    receiver, subscription, funnel, django_capture_on_commit_callbacks
):
    WebhookSubscription.objects.filter(pk=subscription.pk).update(failure_count=7)

    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=funnel, title="Roof")

    subscription.refresh_from_db()
    assert subscription.failure_count == 0


def test_the_task_can_run_twice_and_tolerates_a_deleted_delivery(
    receiver, subscription, funnel, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.deal_create(actor=None, funnel=funnel, title="Roof")
    delivery = WebhookDelivery.objects.get()

    deliver_webhook.delay(delivery.pk)
    deliver_webhook.delay(delivery.pk + 1000)

    assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert delivery.attempts == 1


def test_retries_back_off_exponentially(monkeypatch, receiver, subscription):
    """Under a worker the task asks Celery to come back after 2, 4, 8, 16, 32 s, and
    gives up after the sixth attempt."""
    receiver.codes = [500]
    countdowns = []

    class Retried(Exception):
        pass

    def retry(*, countdown):
        countdowns.append(countdown)
        return Retried()

    monkeypatch.setattr(deliver_webhook, "retry", retry)
    delivery = WebhookDelivery.objects.create(
        subscription=subscription, event="created", payload={"event": "created"}
    )

    for retries in range(5):
        deliver_webhook.push_request(retries=retries, is_eager=False)
        try:
            with pytest.raises(Retried):
                deliver_webhook.run(delivery.pk)
        finally:
            deliver_webhook.pop_request()
    deliver_webhook.push_request(retries=5, is_eager=False)
    try:
        deliver_webhook.run(delivery.pk)
    finally:
        deliver_webhook.pop_request()

    assert countdowns == [2, 4, 8, 16, 32]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (WebhookDeliveryStatus.FAILED, 6)


def test_a_non_http_url_is_refused_without_a_request(funnel, django_capture_on_commit_callbacks):
    WebhookSubscription.objects.create(url="file:///etc/passwd", secret=SECRET, events=["created"])

    with (
        override_settings(WEBHOOK_MAX_ATTEMPTS=1),
        django_capture_on_commit_callbacks(execute=True),
    ):
        services.deal_create(actor=None, funnel=funnel, title="Roof")

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == WebhookDeliveryStatus.FAILED
    assert delivery.error == "Refused to post to a non-HTTP URL: file:///etc/passwd"
