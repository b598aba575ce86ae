from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from crm.sql import Seconds
from funnels.models import REQUIRABLE_DEAL_FIELDS, Funnel, LossReason, Stage


class DealStatus(models.TextChoices):
    OPEN = "open", _("Open")
    POSTPONED = "postponed", _("Postponed")
    WON = "won", _("Won")
    LOST = "lost", _("Lost")


CLOSED_STATUSES = (DealStatus.WON, DealStatus.LOST)
OPEN_STATUSES = (DealStatus.OPEN, DealStatus.POSTPONED)


class Temperature(models.TextChoices):
    WARM = "warm", _("Warm")
    COLD = "cold", _("Cold")


class Contact(models.Model):
    """A client: shared by all of his deals. Phone and email are kept normalised too."""

    name = models.CharField(_("name"), max_length=200)
    phone = models.CharField(_("phone"), max_length=40, blank=True)
    email = models.EmailField(_("email"), blank=True)
    company = models.CharField(_("company"), max_length=200, blank=True)
    phone_normalized = models.CharField(max_length=20, blank=True, editable=False)
    email_normalized = models.CharField(max_length=254, blank=True, editable=False)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        # Plain indexes for the lookups by exact value: a field's db_index would add a
        # second, prefix-search index on PostgreSQL, which no query uses (the client
        # search matches inside the value), and each index costs every new client.
        indexes = [
            models.Index(fields=["phone_normalized"], name="contact_phone_idx"),
            models.Index(fields=["email_normalized"], name="contact_email_idx"),
        ]
        ordering = ["name"]
        verbose_name = _("client")
        verbose_name_plural = _("clients")

    def __str__(self) -> str:
        return f"{self.name} ({self.company})" if self.company else self.name


class Deal(models.Model):
    # funnel, owner and contact have no index of their own: the indexes below that
    # start with them serve every lookup, and each index costs every new deal.
    funnel = models.ForeignKey(
        Funnel,
        verbose_name=_("funnel"),
        on_delete=models.PROTECT,
        related_name="deals",
        db_index=False,
    )
    stage = models.ForeignKey(
        Stage, verbose_name=_("stage"), on_delete=models.PROTECT, related_name="deals"
    )
    status = models.CharField(
        _("status"), max_length=10, choices=DealStatus.choices, default=DealStatus.OPEN
    )
    title = models.CharField(_("title"), max_length=255)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="deals",
        db_index=False,
    )
    contact = models.ForeignKey(
        Contact,
        verbose_name=_("client"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="deals",
        db_index=False,
    )
    amount = models.DecimalField(
        _("amount"), max_digits=14, decimal_places=2, null=True, blank=True
    )
    source = models.CharField(_("source"), max_length=100, blank=True)
    product = models.CharField(_("product"), max_length=100, blank=True)
    region = models.CharField(_("region"), max_length=100, blank=True)
    temperature = models.CharField(
        _("temperature"), max_length=4, choices=Temperature.choices, blank=True
    )
    expected_close_date = models.DateField(_("expected close date"), null=True, blank=True)
    next_contact_at = models.DateTimeField(_("next contact at"), null=True, blank=True)
    loss_reason = models.ForeignKey(
        LossReason,
        verbose_name=_("loss reason"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="deals",
    )
    loss_comment = models.TextField(_("loss comment"), blank=True)
    custom_fields = models.JSONField(_("custom fields"), default=dict, blank=True)
    # NULL, not "", for "none": the unique constraint below ignores NULLs.
    external_id = models.CharField(  # noqa: DJ001
        _("external id"), max_length=120, null=True, blank=True
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now, db_index=True)
    stage_entered_at = models.DateTimeField(_("in the stage since"), default=timezone.now)
    closed_at = models.DateTimeField(_("closed at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    # Kept by the service functions in the same transaction (analytics/facts.py):
    # the highest stage position ever reached (all of them once won), the first
    # action by a person (response time), and whether the client is a repeat one.
    reached_position = models.PositiveIntegerField(_("furthest stage reached"), default=0)
    first_response_at = models.DateTimeField(_("first response at"), null=True, blank=True)
    # The client had another won deal closed before this one closed (or before now,
    # while open): a repeat sale rather than a first one (METRICS.md, "Money").
    is_repeat_client = models.BooleanField(_("repeat client"), default=False)
    version = models.PositiveIntegerField(
        _("version"), default=1, help_text=_("Grows with every change; stale edits are refused.")
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("deal")
        verbose_name_plural = _("deals")
        indexes = [
            models.Index(fields=["funnel", "status", "stage"], name="deal_board_idx"),
            models.Index(fields=["owner", "status"], name="deal_owner_status_idx"),
            models.Index(fields=["status", "next_contact_at"], name="deal_postponed_due_idx"),
            models.Index(fields=["funnel", "created_at"], name="deal_funnel_entered_idx"),
            models.Index(fields=["funnel", "closed_at"], name="deal_funnel_closed_idx"),
            models.Index(fields=["contact", "status", "closed_at"], name="deal_contact_won_idx"),
            # The dashboard's stuck deals: open deals oldest in their stage first, read
            # in order and stopped at the limit (analytics.selectors.stuck_deals).
            models.Index(
                fields=["funnel", "status", "stage_entered_at"],
                include=["stage", "owner"],
                name="deal_stuck_idx",
            ),
            # The dashboard's filter choices: each distinct value found by one index
            # probe (analytics.selectors.deal_field_values), not a scan of the funnel.
            models.Index(fields=["funnel", "source"], name="deal_funnel_source_idx"),
            models.Index(fields=["funnel", "product"], name="deal_funnel_product_idx"),
            models.Index(fields=["funnel", "region"], name="deal_funnel_region_idx"),
            # The funnel engine's reports by manager (analytics/engine.py): each owner's
            # closed deals in order of their length, and answered deals in order of
            # their response time. Every group's percentiles then read samples that
            # are already sorted, and nothing is sorted by owner.
            models.Index(
                models.F("funnel"),
                models.F("owner"),
                Seconds(models.F("closed_at"), models.F("created_at")),
                include=["created_at", "closed_at", "status"],
                condition=Q(status__in=CLOSED_STATUSES),
                name="deal_owner_length_idx",
            ),
            # The deals open now, for calendar mode's open counts and weighted pipeline
            # (analytics/engine.py): read alone, not from the whole table.
            models.Index(
                fields=["funnel", "owner"],
                include=["stage", "amount", "created_at"],
                condition=Q(status__in=OPEN_STATUSES),
                name="deal_open_idx",
            ),
            models.Index(
                models.F("funnel"),
                models.F("owner"),
                Seconds(models.F("first_response_at"), models.F("created_at")),
                # The columns of the expression too: without them PostgreSQL reads the table.
                include=["created_at", "first_response_at"],
                condition=Q(first_response_at__isnull=False),
                name="deal_owner_response_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(status=DealStatus.LOST) | Q(loss_reason__isnull=False),
                name="deal_lost_has_reason",
            ),
            models.CheckConstraint(
                condition=~Q(status=DealStatus.POSTPONED) | Q(next_contact_at__isnull=False),
                name="deal_postponed_has_next_contact",
            ),
            models.CheckConstraint(
                condition=(Q(status__in=CLOSED_STATUSES) & Q(closed_at__isnull=False))
                | (~Q(status__in=CLOSED_STATUSES) & Q(closed_at__isnull=True)),
                name="deal_closed_at_iff_closed",
            ),
            models.CheckConstraint(
                condition=Q(amount__isnull=True) | Q(amount__gte=0),
                name="deal_amount_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(status__in=DealStatus.values), name="deal_status_valid"
            ),
            models.UniqueConstraint(
                fields=["funnel", "external_id"],
                condition=Q(external_id__isnull=False),
                name="deal_unique_external_id_per_funnel",
            ),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def is_closed(self) -> bool:
        return self.status in CLOSED_STATUSES

    def field_is_filled(self, name: str) -> bool:
        """Whether a requirable field (built-in or custom key) has a value."""
        if name in REQUIRABLE_DEAL_FIELDS:
            if name == "contact":
                return self.contact_id is not None
            if name in ("contact_phone", "contact_email", "company"):
                attr = {"contact_phone": "phone", "contact_email": "email"}.get(name, name)
                return bool(self.contact and getattr(self.contact, attr))
            value = getattr(self, name)
            return value is not None and value != ""
        value = (self.custom_fields or {}).get(name)
        return value is not None and value != ""


class _AppendOnly(models.Model):
    """History rows are written once and never changed or deleted."""

    class Meta:
        abstract = True

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None and not self._state.adding:
            raise RuntimeError(f"{type(self).__name__} rows are immutable history.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} rows are immutable history.")


class StageChange(_AppendOnly):
    """A deal entering a stage. Creating a deal writes one with no ``from_stage``."""

    # No index of its own: ``stagechange_deal_at_idx`` starts with it.
    deal = models.ForeignKey(
        Deal,
        verbose_name=_("deal"),
        on_delete=models.PROTECT,
        related_name="stage_changes",
        db_index=False,
    )
    from_stage = models.ForeignKey(
        Stage,
        verbose_name=_("from stage"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    to_stage = models.ForeignKey(
        Stage, verbose_name=_("to stage"), on_delete=models.PROTECT, related_name="+"
    )
    at = models.DateTimeField(_("at"), default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("by"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        ordering = ["deal", "at", "id"]
        verbose_name = _("stage change")
        verbose_name_plural = _("stage changes")
        indexes = [models.Index(fields=["deal", "at"], name="stagechange_deal_at_idx")]
        constraints = [
            models.CheckConstraint(
                condition=Q(from_stage__isnull=True) | ~Q(from_stage=models.F("to_stage")),
                name="stagechange_moves",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deal_id}: {self.from_stage_id} → {self.to_stage_id}"


class StatusChange(_AppendOnly):
    deal = models.ForeignKey(
        Deal, verbose_name=_("deal"), on_delete=models.PROTECT, related_name="status_changes"
    )
    from_status = models.CharField(_("from status"), max_length=10, choices=DealStatus.choices)
    to_status = models.CharField(_("to status"), max_length=10, choices=DealStatus.choices)
    at = models.DateTimeField(_("at"), default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("by"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    stage = models.ForeignKey(
        Stage,
        verbose_name=_("stage"),
        on_delete=models.PROTECT,
        related_name="+",
        help_text=_("The stage the deal was on."),
    )
    loss_reason = models.ForeignKey(
        LossReason, verbose_name=_("loss reason"), on_delete=models.PROTECT, null=True, blank=True
    )
    comment = models.TextField(_("comment"), blank=True)
    next_contact_at = models.DateTimeField(_("next contact at"), null=True, blank=True)

    class Meta:
        ordering = ["deal", "at", "id"]
        verbose_name = _("status change")
        verbose_name_plural = _("status changes")
        indexes = [models.Index(fields=["deal", "at"], name="statuschange_deal_at_idx")]
        constraints = [
            models.CheckConstraint(
                condition=~Q(to_status=DealStatus.LOST) | Q(loss_reason__isnull=False),
                name="statuschange_lost_has_reason",
            ),
            models.CheckConstraint(
                condition=~Q(from_status=models.F("to_status")), name="statuschange_changes"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deal_id}: {self.from_status} → {self.to_status}"


class Task(models.Model):
    deal = models.ForeignKey(
        Deal, verbose_name=_("deal"), on_delete=models.PROTECT, related_name="tasks"
    )
    # No index of its own: ``task_todo_idx`` starts with it.
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("assignee"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        db_index=False,
        related_name="tasks",
    )
    title = models.CharField(_("title"), max_length=200)
    due_at = models.DateTimeField(_("due at"))
    done_at = models.DateTimeField(_("done at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        ordering = ["due_at", "id"]
        verbose_name = _("task")
        verbose_name_plural = _("tasks")
        indexes = [models.Index(fields=["assignee", "done_at", "due_at"], name="task_todo_idx")]

    def __str__(self) -> str:
        return self.title


class Note(models.Model):
    deal = models.ForeignKey(
        Deal, verbose_name=_("deal"), on_delete=models.PROTECT, related_name="notes"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("author"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    text = models.TextField(_("text"))
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name = _("note")
        verbose_name_plural = _("notes")

    def __str__(self) -> str:
        return self.text[:60]


# ---------------------------------------------------------------- lead intake (deals/intake.py)


class LeadOutcome(models.TextChoices):
    CREATED = "created", _("Created a deal")
    ATTACHED = "attached", _("Attached to an open deal")


class IntakeIdempotencyRecord(models.Model):
    """One intake request sent with an ``Idempotency-Key``, and the result it got.

    The unique constraint is what makes two identical requests arriving at the
    same moment safe: the second insert waits for the first transaction and then
    fails, and the second request returns the stored result.
    """

    client = models.CharField(
        _("client"), max_length=40, help_text=_("Who sent it: key:ID or user:ID.")
    )
    key = models.CharField(_("idempotency key"), max_length=255)
    fingerprint = models.CharField(
        _("request fingerprint"), max_length=64, help_text=_("SHA-256 of the request body.")
    )
    result = models.JSONField(_("result"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("intake idempotency record")
        verbose_name_plural = _("intake idempotency records")
        constraints = [
            models.UniqueConstraint(fields=["client", "key"], name="intake_idempotency_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.client}: {self.key}"


class LeadReceipt(models.Model):
    """A lead taken in through the intake: what became of it.

    A lead with an ``external_id`` is taken once per funnel; a retry gets this
    receipt's outcome back instead of a second deal.
    """

    # No index of its own: the lookups by funnel are by external id (the unique
    # index below), and each index costs every lead.
    funnel = models.ForeignKey(
        Funnel,
        verbose_name=_("funnel"),
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    deal = models.ForeignKey(
        Deal, verbose_name=_("deal"), on_delete=models.PROTECT, related_name="lead_receipts"
    )
    outcome = models.CharField(_("outcome"), max_length=10, choices=LeadOutcome.choices)
    # NULL, not "", for "none": the unique constraint below ignores NULLs.
    external_id = models.CharField(  # noqa: DJ001
        _("external id"), max_length=120, null=True, blank=True
    )
    client = models.CharField(_("client"), max_length=40)
    payload = models.JSONField(_("lead as received"), default=dict)
    received_at = models.DateTimeField(_("received at"), default=timezone.now)

    class Meta:
        ordering = ["-received_at"]
        verbose_name = _("lead receipt")
        verbose_name_plural = _("lead receipts")
        constraints = [
            models.UniqueConstraint(
                fields=["funnel", "external_id"],
                condition=Q(external_id__isnull=False),
                name="lead_receipt_unique_external_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.outcome}: deal {self.deal_id}"


class FunnelIntakeState(models.Model):
    """Per-funnel intake state. Its row lock hands out the round-robin turns one
    transaction at a time, so that the rotation stays fair."""

    funnel = models.OneToOneField(
        Funnel,
        verbose_name=_("funnel"),
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="intake_state",
    )
    last_assigned = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("last assigned manager"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        verbose_name = _("funnel intake state")
        verbose_name_plural = _("funnel intake states")

    def __str__(self) -> str:
        return f"{self.funnel_id}: last {self.last_assigned_id}"


# ---------------------------------------------------------------- webhooks (deals/webhooks.py)


class WebhookEvent(models.TextChoices):
    CREATED = "created", _("Deal created")
    MOVED = "moved", _("Deal moved to another stage")
    WON = "won", _("Deal won")
    LOST = "lost", _("Deal lost")
    POSTPONED = "postponed", _("Deal postponed")


class WebhookSubscription(models.Model):
    """A receiver of deal events: every matching event is posted to ``url``, signed
    with ``secret``. Repeated failure disables it (``disabled_at``)."""

    url = models.URLField(_("URL"), max_length=500)
    secret = models.CharField(
        _("secret"), max_length=200, help_text=_("Signs every body with HMAC-SHA256.")
    )
    events = models.JSONField(
        _("events"), default=list, help_text=_("Any of: created, moved, won, lost, postponed.")
    )
    funnel = models.ForeignKey(
        Funnel,
        verbose_name=_("funnel"),
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="webhook_subscriptions",
        help_text=_("Only this funnel's deals; empty for every funnel."),
    )
    is_active = models.BooleanField(_("active"), default=True)
    failure_count = models.PositiveIntegerField(
        _("consecutive failed deliveries"), default=0, editable=False
    )
    disabled_at = models.DateTimeField(_("disabled at"), null=True, blank=True, editable=False)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        ordering = ["id"]
        verbose_name = _("webhook subscription")
        verbose_name_plural = _("webhook subscriptions")

    def __str__(self) -> str:
        return self.url

    def clean(self) -> None:
        events = self.events
        if not isinstance(events, list) or not events or set(events) - set(WebhookEvent.values):
            raise ValidationError(
                {
                    "events": _("List one or more of: %(events)s.")
                    % {"events": ", ".join(WebhookEvent.values)}
                }
            )
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValidationError({"url": _("Use an http:// or https:// address.")})


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    DELIVERED = "delivered", _("Delivered")
    FAILED = "failed", _("Failed")


class WebhookDelivery(models.Model):
    """One event for one subscription, and what became of posting it."""

    subscription = models.ForeignKey(
        WebhookSubscription,
        verbose_name=_("subscription"),
        on_delete=models.CASCADE,
        related_name="deliveries",
    )
    event = models.CharField(_("event"), max_length=10, choices=WebhookEvent.choices)
    payload = models.JSONField(_("payload"))
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    status = models.CharField(
        _("status"),
        max_length=10,
        choices=WebhookDeliveryStatus.choices,
        default=WebhookDeliveryStatus.PENDING,
    )
    response_code = models.PositiveIntegerField(_("response code"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(_("delivered at"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries")
        indexes = [
            models.Index(fields=["subscription", "created_at"], name="webhookdelivery_sub_idx")
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.subscription_id}: {self.status}"
