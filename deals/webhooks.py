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

Subscriptions are managed by administrators (the admin, or the API through
``webhook_subscription_create``/``_update``/``_delete``). The signing secret is
made by the server and returned once, by ``webhook_subscription_create``.

Settings (optional, with defaults): ``WEBHOOK_RETRY_BASE_SECONDS`` (2),
``WEBHOOK_MAX_ATTEMPTS`` (6), ``WEBHOOK_DISABLE_AFTER_FAILURES`` (10),
``WEBHOOK_TIMEOUT_SECONDS`` (5).
"""

import functools
import hashlib
import hmac
import json
import logging
import secrets
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import mail_admins
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import User
from crm.db import fetch_objects, select_list
from crm.errors import Forbidden, InvalidInput
from deals.models import (
    Deal,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEvent,
    WebhookSubscription,
)
from funnels.models import Funnel

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
    return webhooks_dispatch_many(deals=[deal], event=event)


_SUBSCRIPTION_COLUMNS = ("id", "funnel", "events")


def webhooks_dispatch_many(*, deals: list[Deal], event: str) -> list[WebhookDelivery]:
    """``webhooks_dispatch`` for many deals of one change (a batch of leads): one
    query for the subscriptions, one insert for the deliveries."""
    if event not in WebhookEvent.values:
        raise ValueError(f"Unknown webhook event {event!r}.")
    if not deals:
        return []
    funnel_ids = {None} | {deal.funnel_id for deal in deals}
    active = fetch_objects(
        WebhookSubscription,
        _SUBSCRIPTION_COLUMNS,
        f"SELECT {select_list(WebhookSubscription, _SUBSCRIPTION_COLUMNS, 's')} "
        f"FROM {WebhookSubscription._meta.db_table} s WHERE s.is_active",
    )
    subscriptions = [
        subscription
        # Few rows: the funnel and the event (JSON "contains" differs between SQLite
        # and PostgreSQL) are matched here, in a hand-written query: every new deal
        # runs it, and building a queryset's SQL costs more than running it.
        for subscription in active
        if subscription.funnel_id in funnel_ids and event in (subscription.events or [])
    ]
    if not subscriptions:
        return []
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            subscription=subscription, event=event, payload=webhook_payload(deal=deal, event=event)
        )
        for deal in deals
        for subscription in subscriptions
        if subscription.funnel_id in (None, deal.funnel_id)
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


# ---------------------------------------------------------------- subscriptions

SECRET_PREFIX = "whsec_"
# What webhook_subscription_update may change; the secret and the failure count are the server's.
SUBSCRIPTION_SETTINGS = ("url", "events", "funnel", "is_active")


def webhooks_check_manager(actor: User | None) -> None:
    """Raise ``Forbidden`` unless ``actor`` may see and change subscriptions:
    an administrator, or the system (``None``: an integration key the API let through)."""
    if actor is not None and not actor.is_admin_role:
        raise Forbidden(_("Only an administrator can manage webhook subscriptions."))


def _subscription_errors(*, url, events) -> dict[str, str]:
    errors: dict[str, str] = {}
    max_length = WebhookSubscription._meta.get_field("url").max_length
    if not isinstance(url, str) or len(url) > max_length:
        errors["url"] = _("Use an address of at most %(max)s characters.") % {"max": max_length}
    else:
        try:
            URLValidator(schemes=["http", "https"])(url)
        except ValidationError:
            errors["url"] = _("Use an http:// or https:// address.")
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(event, str) for event in events)
        or set(events) - set(WebhookEvent.values)
    ):
        errors["events"] = _("List one or more of: %(events)s.") % {
            "events": ", ".join(WebhookEvent.values)
        }
    return errors


def _subscription_check(*, url, events) -> None:
    errors = _subscription_errors(url=url, events=events)
    if errors:
        raise InvalidInput(
            _("The webhook subscription has errors: fix the marked fields."), fields=errors
        )


@transaction.atomic
def webhook_subscription_create(
    *,
    actor: User | None,
    url: str,
    events: list[str],
    funnel: Funnel | None = None,
    is_active: bool = True,
) -> tuple[WebhookSubscription, str]:
    """Subscribe ``url`` to ``events`` (of ``funnel``'s deals, or of every funnel).

    The signing secret is made here; return the subscription and the secret,
    which no read of the API shows again. Raises ``Forbidden`` (not an
    administrator) or ``InvalidInput`` naming the bad fields.
    """
    webhooks_check_manager(actor)
    url = url.strip() if isinstance(url, str) else url
    _subscription_check(url=url, events=events)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    subscription = WebhookSubscription.objects.create(
        url=url,
        secret=secret,
        events=list(dict.fromkeys(events)),
        funnel=funnel,
        is_active=is_active,
        disabled_at=None if is_active else timezone.now(),
    )
    return subscription, secret


@transaction.atomic
def webhook_subscription_update(
    *, actor: User | None, subscription: WebhookSubscription, **values
) -> WebhookSubscription:
    """Change any of ``SUBSCRIPTION_SETTINGS``; the row is locked meanwhile.

    Turning a disabled subscription back on forgets its failures in a row, as
    the admin's "enable" does; turning it off stamps ``disabled_at``, and its
    pending deliveries fail when their turn comes. Raises ``Forbidden`` or
    ``InvalidInput`` (nothing is saved).
    """
    webhooks_check_manager(actor)
    unknown = set(values) - set(SUBSCRIPTION_SETTINGS)
    if unknown:
        raise InvalidInput(
            _("Unknown subscription settings: %(names)s.") % {"names": ", ".join(sorted(unknown))}
        )
    subscription = WebhookSubscription.objects.select_for_update().get(pk=subscription.pk)
    if isinstance(values.get("url"), str):
        values["url"] = values["url"].strip()
    _subscription_check(
        url=values.get("url", subscription.url), events=values.get("events", subscription.events)
    )
    if "events" in values:
        values["events"] = list(dict.fromkeys(values["events"]))
    fields = set(values)
    was_active = subscription.is_active
    for name, value in values.items():
        setattr(subscription, name, value)
    if subscription.is_active and not was_active:
        subscription.failure_count = 0
        subscription.disabled_at = None
        fields |= {"failure_count", "disabled_at"}
    elif was_active and not subscription.is_active:
        subscription.disabled_at = timezone.now()
        fields.add("disabled_at")
    if fields:
        subscription.save(update_fields=sorted(fields))
    return subscription


@transaction.atomic
def webhook_subscription_delete(*, actor: User | None, subscription: WebhookSubscription) -> None:
    """Delete the subscription with its delivery log. Deliveries still queued are
    dropped: their task finds no row."""
    webhooks_check_manager(actor)
    WebhookSubscription.objects.filter(pk=subscription.pk).delete()
