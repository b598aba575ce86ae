"""Lead intake: every good lead becomes exactly one deal, every bad one a clear error.

Site forms, ad platforms and telephony post leads through the API
(``POST /api/v1/leads/``); this module is the one place that decides what
becomes of them. ``lead_intake`` runs one request (one lead or a batch) in one
transaction:

1. With an ``Idempotency-Key`` it first inserts the request's
   ``IntakeIdempotencyRecord``. A concurrent request with the same key blocks
   on the unique constraint until the first commits, then fails with an
   ``IntegrityError`` and returns the stored result: a retry never makes a
   second deal, even when both arrive at the same moment.
2. It locks each target funnel's ``FunnelIntakeState`` row (in id order, so two
   batches never deadlock). Intake into one funnel is therefore serial: the
   round-robin counter is fair across concurrent requests, and two leads of
   one client arriving together cannot both open a deal.
3. Each lead runs in its own savepoint: a lead with an ``external_id`` already
   taken gets its original outcome back; a lead whose normalised phone or
   email matches an open deal of the funnel is attached to it as a note;
   otherwise ``deal_create`` opens a deal (its first stage's task templates
   fire) for the given owner or the next manager in turn. A bad lead of a
   batch is reported at its index and the others go in.

Deals are created by the system (``actor=None``); who may post into which
funnel is checked here, from the ``IntakeClient``.
"""

import dataclasses
from collections.abc import Sequence
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import ApiKey, Role, User
from crm.errors import DomainError, Forbidden, InvalidInput
from deals.models import (
    Deal,
    DealStatus,
    FunnelIntakeState,
    IntakeIdempotencyRecord,
    LeadOutcome,
    LeadReceipt,
)
from deals.services import deal_create, normalize_email, normalize_phone, note_add
from funnels.models import Funnel

MAX_BATCH = 1000
REJECTED = "rejected"


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    http_status = 422


@dataclasses.dataclass(frozen=True)
class IntakeClient:
    """Who posts the leads.

    ``label`` scopes idempotency keys (``key:ID`` or ``user:ID``). An integration
    key has no ``user``; its ``funnel_id`` is the default funnel and the only one
    it may post into. A person may post into the funnels he works (heads and
    admins into any).
    """

    label: str
    user: User | None = None
    funnel_id: int | None = None
    attach_duplicates: bool = True

    @classmethod
    def for_api_key(cls, api_key: ApiKey) -> "IntakeClient":
        return cls(
            label=f"key:{api_key.pk}",
            user=api_key.user,
            funnel_id=api_key.funnel_id,
            attach_duplicates=api_key.attach_duplicates,
        )

    @classmethod
    def for_user(cls, user: User) -> "IntakeClient":
        return cls(label=f"user:{user.pk}", user=user)


@dataclasses.dataclass
class LeadData:
    """One lead, already checked for shape and types by the API's input serializer."""

    title: str = ""
    contact_name: str = ""
    contact_phone: str = ""
    contact_email: str = ""
    company: str = ""
    source: str = ""
    utm: dict[str, str] = dataclasses.field(default_factory=dict)
    amount: Decimal | None = None
    product: str = ""
    region: str = ""
    temperature: str = ""
    comment: str = ""
    funnel_id: int | None = None
    owner_id: int | None = None
    custom_fields: dict = dataclasses.field(default_factory=dict)
    external_id: str | None = None
    # The lead as it came in, kept on its receipt.
    payload: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class IntakeResult:
    """``results``: one dict per lead, in request order. ``replayed``: the request's
    Idempotency-Key was seen before and this is the stored result."""

    results: list[dict]
    replayed: bool = False

    @property
    def created(self) -> int:
        return sum(1 for r in self.results if r["status"] == LeadOutcome.CREATED)


# Deal fields named by the service functions' errors, as the lead names them.
_LEAD_FIELD_NAMES = {
    "contact_name": "contact.name",
    "contact_phone": "contact.phone",
    "contact_email": "contact.email",
    "contact": "contact",
}
# Names the API already uses for a lead's fields: passed through as they are.
_LEAD_FIELDS = {f.name for f in dataclasses.fields(LeadData)} | {
    "funnel",
    "non_field_errors",
    "Idempotency-Key",
}


def _lead_field_name(name: str) -> str:
    if name in _LEAD_FIELD_NAMES:
        return _LEAD_FIELD_NAMES[name]
    if name in _LEAD_FIELDS or "." in name:
        return name
    return f"custom_fields.{name}"  # a custom field's key (or a stage's required one)


def _error_dict(error: DomainError) -> dict:
    return {
        "code": error.code,
        "detail": error.message,
        "fields": {_lead_field_name(k): v for k, v in error.fields.items()},
    }


def lead_error(error: DomainError) -> DomainError:
    """The same error with the service functions' field names put as the lead names them."""
    mapped = type(error)(error.message, fields=_error_dict(error)["fields"])
    return mapped


# ---------------------------------------------------------------- the request


@transaction.atomic
def lead_intake(
    *,
    client: IntakeClient,
    leads: Sequence[LeadData | InvalidInput],
    idempotency_key: str | None = None,
    fingerprint: str = "",
    raise_on_reject: bool = False,
) -> IntakeResult:
    """Take one request's leads; return each lead's outcome in order.

    An ``InvalidInput`` in place of a lead is one the API could not parse: it is
    reported as rejected at its index. ``fingerprint`` identifies the request's
    body: an ``idempotency_key`` reused with another body raises
    ``IdempotencyKeyReused``. With ``raise_on_reject`` (a single lead) a rejected
    lead raises its error and nothing is stored, the idempotency record included.
    """
    if len(leads) > MAX_BATCH:
        raise InvalidInput(
            _("Send at most %(max)s leads at once.") % {"max": MAX_BATCH},
            fields={"leads": _("Split the batch.")},
        )
    record = None
    if idempotency_key:
        record = _claim_idempotency_key(client, idempotency_key, fingerprint)
        if record.result is not None:
            return IntakeResult(results=record.result["results"], replayed=True)
    results = _take_leads(client, leads, raise_on_reject=raise_on_reject)
    if record is not None:
        record.result = {"results": results}
        record.save(update_fields=["result"])
    return IntakeResult(results=results)


def _claim_idempotency_key(
    client: IntakeClient, key: str, fingerprint: str
) -> IntakeIdempotencyRecord:
    """Insert the key's record, or return the stored one (its ``result`` is then set).

    The insert runs in a savepoint: if another transaction holds the same key,
    PostgreSQL makes this insert wait for it; once it commits the insert fails
    and the committed record is read instead (READ COMMITTED sees it).
    """
    try:
        with transaction.atomic():
            return IntakeIdempotencyRecord.objects.create(
                client=client.label, key=key, fingerprint=fingerprint
            )
    except IntegrityError:
        record = IntakeIdempotencyRecord.objects.get(client=client.label, key=key)
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            _(
                "This Idempotency-Key was used for a different request. "
                "Use a new key for a new request."
            ),
            fields={"Idempotency-Key": _("Already used for another request body.")},
        )
    return record


@dataclasses.dataclass
class _FunnelIntake:
    """A locked funnel's intake state and its managers in turn, for one request."""

    funnel: Funnel
    state: FunnelIntakeState
    rotation: list[User]

    def next_manager(self) -> User | None:
        """The next active, present manager after the last one assigned (by id, wrapping)."""
        if not self.rotation:
            return None
        last = self.state.last_assigned_id or 0
        return next((user for user in self.rotation if user.pk > last), self.rotation[0])


def _take_leads(
    client: IntakeClient, leads: Sequence[LeadData | InvalidInput], *, raise_on_reject: bool
) -> list[dict]:
    funnels: dict[int, Funnel] = {}
    targets: list[Funnel | DomainError] = []
    for lead in leads:
        if isinstance(lead, DomainError):
            targets.append(lead)
            continue
        try:
            targets.append(_target_funnel(client, lead, funnels))
        except DomainError as error:
            targets.append(error)
    intakes = _lock_funnels(sorted({f.pk for f in targets if isinstance(f, Funnel)}), funnels)

    results = []
    for index, (lead, target) in enumerate(zip(leads, targets, strict=True)):
        if isinstance(target, DomainError):
            error = target
        else:
            intake = intakes[target.pk]
            try:
                with transaction.atomic():
                    results.append({"index": index, **_take_lead(client, lead, intake)})
                continue
            except DomainError as exc:
                error = exc
                # The savepoint undid the assignment; forget it in memory too.
                intake.state.refresh_from_db(fields=["last_assigned"])
        if raise_on_reject:
            raise lead_error(error)
        results.append(
            {
                "index": index,
                "status": REJECTED,
                "deal_id": None,
                "owner_id": None,
                "external_id": getattr(lead, "external_id", None),
                "replayed": False,
                "error": _error_dict(error),
            }
        )
    return results


def _target_funnel(client: IntakeClient, lead: LeadData, cache: dict[int, Funnel]) -> Funnel:
    funnel_id = lead.funnel_id or client.funnel_id
    if funnel_id is None:
        raise InvalidInput(
            _("Say which funnel the lead goes to."),
            fields={"funnel": _("Give the funnel's id (this key has no default funnel).")},
        )
    if client.funnel_id is not None and funnel_id != client.funnel_id:
        raise Forbidden(
            _("This key posts leads only into its own funnel."),
            fields={"funnel": _("Leave it out or give the key's funnel.")},
        )
    if funnel_id not in cache:
        funnel = Funnel.objects.filter(pk=funnel_id).first()
        if funnel is None:
            raise InvalidInput(
                _("Funnel %(id)s does not exist.") % {"id": funnel_id},
                fields={"funnel": _("No such funnel.")},
            )
        cache[funnel_id] = funnel
    funnel = cache[funnel_id]
    if not funnel.is_active:
        raise InvalidInput(
            _("The funnel “%(name)s” is archived.") % {"name": funnel.name},
            fields={"funnel": _("Choose an active funnel.")},
        )
    user = client.user
    if (
        user is not None
        and not (user.is_admin_role or user.is_head)
        and not funnel.members.filter(pk=user.pk).exists()
    ):
        raise Forbidden(
            _("You do not work the funnel “%(name)s”.") % {"name": funnel.name},
            fields={"funnel": _("Choose one of your funnels.")},
        )
    return funnel


def _lock_funnels(funnel_ids: list[int], funnels: dict[int, Funnel]) -> dict[int, _FunnelIntake]:
    if not funnel_ids:
        return {}
    # The state rows are created once, race-free; then locked in id order.
    FunnelIntakeState.objects.bulk_create(
        [FunnelIntakeState(funnel_id=pk) for pk in funnel_ids], ignore_conflicts=True
    )
    states = {
        state.funnel_id: state
        for state in FunnelIntakeState.objects.select_for_update()
        .filter(funnel_id__in=funnel_ids)
        .order_by("funnel_id")
    }
    return {
        pk: _FunnelIntake(
            funnel=funnels[pk],
            state=states[pk],
            rotation=list(
                funnels[pk]
                .members.filter(is_active=True, role=Role.MANAGER, is_away=False)
                .order_by("pk")
            ),
        )
        for pk in funnel_ids
    }


# ---------------------------------------------------------------- one lead


def _result(
    outcome: str, deal: Deal, lead: LeadData, *, replayed: bool = False
) -> dict[str, object]:
    return {
        "status": str(outcome),
        "deal_id": deal.pk,
        "owner_id": deal.owner_id,
        "external_id": lead.external_id,
        "replayed": replayed,
        "error": None,
    }


def _take_lead(client: IntakeClient, lead: LeadData, intake: _FunnelIntake) -> dict:
    funnel = intake.funnel
    if lead.external_id:
        receipt = (
            LeadReceipt.objects.select_related("deal")
            .filter(funnel=funnel, external_id=lead.external_id)
            .first()
        )
        if receipt is not None:
            return _result(receipt.outcome, receipt.deal, lead, replayed=True)
        # Created by another door (the importer) with the same external id.
        deal = Deal.objects.filter(funnel=funnel, external_id=lead.external_id).first()
        if deal is not None:
            return _result(LeadOutcome.CREATED, deal, lead, replayed=True)

    duplicate = _open_duplicate(funnel, lead) if client.attach_duplicates else None
    if duplicate is not None:
        note_add(actor=None, deal=duplicate, text=_lead_note(lead, client, repeated=True))
        _receipt(client, lead, duplicate, LeadOutcome.ATTACHED)
        return _result(LeadOutcome.ATTACHED, duplicate, lead)

    owner = _lead_owner(lead, intake)
    deal = deal_create(
        actor=None,
        funnel=funnel,
        title=_lead_title(lead),
        owner=owner,
        values=_deal_values(lead),
        external_id=lead.external_id,
    )
    if lead.comment or lead.utm:
        note_add(actor=None, deal=deal, text=_lead_note(lead, client, repeated=False))
    if lead.owner_id is None and owner is not None:
        intake.state.last_assigned = owner
        intake.state.save(update_fields=["last_assigned"])
    _receipt(client, lead, deal, LeadOutcome.CREATED)
    return _result(LeadOutcome.CREATED, deal, lead)


def _open_duplicate(funnel: Funnel, lead: LeadData) -> Deal | None:
    """The newest open (or postponed) deal of the funnel with the lead's phone or email."""
    phone, email = normalize_phone(lead.contact_phone), normalize_email(lead.contact_email)
    match = Q()
    if phone:
        match |= Q(contact__phone_normalized=phone)
    if email:
        match |= Q(contact__email_normalized=email)
    if not match:
        return None
    return (
        Deal.objects.filter(funnel=funnel, status__in=(DealStatus.OPEN, DealStatus.POSTPONED))
        .filter(match)
        .order_by("-created_at", "-pk")
        .first()
    )


def _lead_owner(lead: LeadData, intake: _FunnelIntake) -> User | None:
    if lead.owner_id is None:
        return intake.next_manager()
    owner = User.objects.filter(pk=lead.owner_id).first()
    if owner is None or not owner.is_active:
        raise InvalidInput(
            _("User %(id)s is not an active user.") % {"id": lead.owner_id},
            fields={"owner_id": _("Choose an active user.")},
        )
    if not (owner.is_admin_role or owner.is_head) and not any(
        member.pk == owner.pk for member in intake.funnel.members.all()
    ):
        raise InvalidInput(
            _("%(user)s does not work the funnel “%(funnel)s”.")
            % {"user": owner, "funnel": intake.funnel.name},
            fields={"owner_id": _("Choose a member of the funnel.")},
        )
    return owner


def _lead_title(lead: LeadData) -> str:
    if lead.title.strip():
        return lead.title
    who = lead.contact_name or lead.company or lead.contact_phone or lead.contact_email
    return _("Lead: %(who)s") % {"who": who} if who else _("Lead")


def _deal_values(lead: LeadData) -> dict:
    values = {
        "contact_name": lead.contact_name,
        "contact_phone": lead.contact_phone,
        "contact_email": lead.contact_email,
        "company": lead.company,
        "source": lead.source,
        "product": lead.product,
        "region": lead.region,
        "temperature": lead.temperature,
    }
    values = {name: value for name, value in values.items() if value}
    if lead.amount is not None:
        values["amount"] = lead.amount
    if lead.custom_fields:
        values["custom_fields"] = lead.custom_fields
    return values


def _lead_note(lead: LeadData, client: IntakeClient, *, repeated: bool) -> str:
    lines = [
        _("The client sent another request (%(client)s).") % {"client": client.label}
        if repeated
        else _("Request received (%(client)s).") % {"client": client.label}
    ]
    if repeated:
        details = [
            ("title", lead.title),
            ("name", lead.contact_name),
            ("phone", lead.contact_phone),
            ("email", lead.contact_email),
            ("company", lead.company),
            ("source", lead.source),
            ("product", lead.product),
            ("amount", "" if lead.amount is None else str(lead.amount)),
        ]
        lines += [f"{label}: {value}" for label, value in details if value]
    if lead.comment:
        lines.append(_("Comment: %(text)s") % {"text": lead.comment})
    if lead.utm:
        lines.append("UTM: " + ", ".join(f"{k}={v}" for k, v in sorted(lead.utm.items())))
    return "\n".join(lines)


def _receipt(client: IntakeClient, lead: LeadData, deal: Deal, outcome: str) -> None:
    LeadReceipt.objects.create(
        funnel_id=deal.funnel_id,
        deal=deal,
        outcome=outcome,
        external_id=lead.external_id or None,
        client=client.label,
        payload=lead.payload,
        received_at=timezone.now(),
    )
