"""Outbound webhooks: deal events posted to subscribers, signed, after commit.

``webhooks_dispatch`` is called by the service functions inside their
transaction: it writes one ``WebhookDelivery`` per matching subscription and
schedules the Celery task only on commit, so a rolled-back change sends
nothing and a slow receiver never slows the change down.

``webhook_deliver`` makes one attempt; the task ``deals.tasks.deliver_webhook``
owns the retries with exponential backoff and calls ``webhook_give_up`` after
the last one. A receiver sees at least once delivery: the same delivery may
arrive twice (a worker killed after posting), so it carries
``X-Voronka-Delivery`` for the receiver to drop repeats.

Settings (optional, with defaults): ``WEBHOOK_RETRY_BASE_SECONDS`` (2),
``WEBHOOK_MAX_ATTEMPTS`` (6), ``WEBHOOK_DISABLE_AFTER_FAILURES`` (10),
``WEBHOOK_TIMEOUT_SECONDS`` (5).
"""

import functools
import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import mail_admins
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from deals.models import (
    Deal,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEvent,
    WebhookSubscription,
)

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Voronka-Signature"
EVENT_HEADER = "X-Voronka-Event"
DELIVERY_HEADER = "X-Voronka-Delivery"
# A receiver's answer is not read beyond this: the log keeps only the code and an excerpt.
_ERROR_EXCERPT = 500


def retry_base_seconds() -> float:
    return float(getattr(settings, "WEBHOOK_RETRY_BASE_SECONDS", 2))


def max_attempts() -> int:
    return int(getattr(settings, "WEBHOOK_MAX_ATTEMPTS", 6))


def _disable_after_failures() -> int:
    return int(getattr(settings, "WEBHOOK_DISABLE_AFTER_FAILURES", 10))


def _timeout_seconds() -> float:
    return float(getattr(settings, "WEBHOOK_TIMEOUT_SECONDS", 5))


def webhook_payload(*, deal: Deal, event: str, occurred_at=None) -> dict:
    """The JSON body of an event: plain values only (strings, numbers, null)."""
    occurred_at = occurred_at or timezone.now()
    return {
        "event": event,
        "occurred_at": occurred_at.isoformat(),
        "deal": {
            "id": deal.pk,
            "funnel_id": deal.funnel_id,
            "stage_id": deal.stage_id,
            "stage": deal.stage.name,
            "status": deal.status,
            "title": deal.title,
            "owner": deal.owner.username if deal.owner_id else None,
            "amount": str(deal.amount) if deal.amount is not None else None,
            "loss_reason": deal.loss_reason.name if deal.loss_reason_id else None,
            "next_contact_at": (deal.next_contact_at.isoformat() if deal.next_contact_at else None),
        },
    }


def webhook_signature(secret: str, body: bytes) -> str:
    """The value of ``X-Voronka-Signature``: ``sha256=`` and the hex HMAC of the raw body."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def webhooks_dispatch(*, deal: Deal, event: str) -> list[WebhookDelivery]:
    """Queue ``event`` of ``deal`` for every active subscription that wants it.

    Call it inside the change's transaction: the delivery rows roll back with
    the change, and the task is only scheduled once the change is committed.
    """
    if event not in WebhookEvent.values:
        raise ValueError(f"Unknown webhook event {event!r}.")
    subscriptions = [
        subscription
        for subscription in WebhookSubscription.objects.filter(is_active=True).filter(
            Q(funnel__isnull=True) | Q(funnel_id=deal.funnel_id)
        )
        # JSON "contains" differs between SQLite and PostgreSQL: filter the list here.
        if event in (subscription.events or [])
    ]
    if not subscriptions:
        return []
    payload = webhook_payload(deal=deal, event=event)
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(subscription=subscription, event=event, payload=payload)
        for subscription in subscriptions
    )
    # Imported here: deals.tasks imports deals.services, which imports this module.
    from deals.tasks import deliver_webhook

    for delivery in deliveries:
        # robust: a broker outage after commit is logged, never turned into an error
        # for a change that has already been saved.
        transaction.on_commit(functools.partial(deliver_webhook.delay, delivery.pk), robust=True)
    return deliveries


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    """POST the body; return (status code or None, error text or "")."""
    if urlsplit(url).scheme not in ("http", "https"):
        return None, f"Refused to post to a non-HTTP URL: {url}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=_timeout_seconds()) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        excerpt = error.read(_ERROR_EXCERPT).decode("utf-8", "replace")
        return error.code, f"HTTP {error.code}: {excerpt}".strip()
    except (OSError, ValueError) as error:  # URLError, timeouts, refused connections
        return None, f"{type(error).__name__}: {error}"[:_ERROR_EXCERPT]


def webhook_deliver(delivery_id: int) -> bool:
    """Make one attempt to post a pending delivery. Return False if it should be retried.

    A delivery that is gone, already delivered or failed, or whose subscription
    is disabled, is left alone (True): the task may run twice.
    A success resets the subscription's count of consecutive failures.
    """
    delivery = WebhookDelivery.objects.select_related("subscription").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDeliveryStatus.PENDING:
        return True
    subscription = delivery.subscription
    if not subscription.is_active:
        WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDeliveryStatus.PENDING).update(
            status=WebhookDeliveryStatus.FAILED, error="The subscription is disabled."
        )
        return True
    body = json.dumps(delivery.payload, ensure_ascii=False, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Voronka-Webhooks/1",
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: str(delivery.pk),
        SIGNATURE_HEADER: webhook_signature(subscription.secret, body),
    }
    # The post runs outside any transaction: no row stays locked while a receiver is slow.
    code, error = _post(subscription.url, body, headers)
    ok = code is not None and 200 <= code < 300
    now = timezone.now()
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None or delivery.status != WebhookDeliveryStatus.PENDING:
            return True
        delivery.attempts += 1
        delivery.response_code = code
        delivery.error = error
        fields = ["attempts", "response_code", "error"]
        if ok:
            delivery.status = WebhookDeliveryStatus.DELIVERED
            delivery.delivered_at = now
            fields += ["status", "delivered_at"]
            WebhookSubscription.objects.filter(pk=subscription.pk, failure_count__gt=0).update(
                failure_count=0
            )
        delivery.save(update_fields=fields)
    if not ok:
        logger.info(
            "Webhook delivery %s to %s failed (attempt %s): %s",
            delivery_id,
            subscription.url,
            delivery.attempts,
            error,
        )
    return ok


def webhook_give_up(delivery_id: int) -> None:
    """Mark a pending delivery failed after its last attempt; count it against the
    subscription, and disable the subscription after too many failures in a row
    (admins are told once it is committed). Safe to run twice."""
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None or delivery.status != WebhookDeliveryStatus.PENDING:
            return
        delivery.status = WebhookDeliveryStatus.FAILED
        delivery.save(update_fields=["status"])
        subscription = WebhookSubscription.objects.select_for_update().get(
            pk=delivery.subscription_id
        )
        subscription.failure_count += 1
        fields = ["failure_count"]
        if subscription.is_active and subscription.failure_count >= _disable_after_failures():
            subscription.is_active = False
            subscription.disabled_at = timezone.now()
            fields += ["is_active", "disabled_at"]
            transaction.on_commit(functools.partial(_notify_disabled, subscription.pk), robust=True)
        subscription.save(update_fields=fields)


def _notify_disabled(subscription_id: int) -> None:
    subscription = WebhookSubscription.objects.get(pk=subscription_id)
    logger.warning(
        "Webhook subscription %s (%s) disabled after %s failed deliveries in a row.",
        subscription.pk,
        subscription.url,
        subscription.failure_count,
    )
    mail_admins(
        f"Webhook subscription {subscription.pk} disabled",
        f"Voronka stopped posting deal events to {subscription.url}: its last "
        f"{subscription.failure_count} deliveries failed. Fix the receiver, then "
        "tick “active” on the subscription in the admin to resume.",
    )


def webhook_subscription_enable(*, subscription_id: int) -> None:
    """Turn a subscription (back) on with a clean slate of failures."""
    WebhookSubscription.objects.filter(pk=subscription_id).update(
        is_active=True, failure_count=0, disabled_at=None
    )
