"""Every change of state of a deal: one function each, the only door.

Each function locks the deal (``select_for_update``), re-reads it, checks the
actor's right and the funnel's rules, saves only the changed fields, bumps the
version and appends the history row, all in one transaction. A broken rule
raises a ``crm.errors.DomainError`` subclass and changes nothing.

``actor=None`` means the system (a scheduled task, the importer): it skips the
permission check but never the funnel's rules. ``at`` lets the importer and
the demo write history in the past; it defaults to now.
"""

import dataclasses
import datetime
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import User
from analytics import facts
from crm.db import (
    fetch_joined,
    fetch_objects,
    insert_objects_with_ids,
    insert_rows,
    placeholders,
    select_list,
    update_rows,
    writes_together,
)
from crm.errors import Conflict, Forbidden, InvalidInput, NotFound
from deals.models import (
    Contact,
    Deal,
    DealStatus,
    Note,
    StageChange,
    StatusChange,
    Task,
    Temperature,
    WebhookEvent,
)
from deals.selectors import user_can_change_deal
from deals.webhooks import webhooks_dispatch, webhooks_dispatch_many
from funnels.models import REQUIRABLE_DEAL_FIELDS, Funnel, LossReason, Stage, TaskTemplate
from funnels.services import custom_values_clean

# Fields a person may set on a deal directly (stage and status have their own doors).
EDITABLE_FIELDS = (
    "title",
    "amount",
    "source",
    "product",
    "region",
    "temperature",
    "expected_close_date",
    "custom_fields",
)
CONTACT_FIELDS = {
    "contact_name": "name",
    "contact_phone": "phone",
    "contact_email": "email",
    "company": "company",
}


# ---------------------------------------------------------------- clients


def normalize_phone(phone: str) -> str:
    """Digits only, Russian numbers as 7XXXXXXXXXX, so that 8 (900) … and +7 900 … match."""
    digits = re.sub(r"\D", "", phone or "")
    if len(digits) == 11 and digits.startswith("8"):
        digits = "7" + digits[1:]
    elif len(digits) == 10 and digits.startswith("9"):
        digits = "7" + digits
    return digits


def phone_is_valid(phone: str) -> bool:
    """A phone number has 7 to 15 digits (E.164's longest)."""
    return 7 <= len(normalize_phone(phone)) <= 15


def normalize_email(email: str) -> str:
    return (email or "").strip().lower()


EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _contact_check(*, phone: str = "", email: str = "", errors: dict | None = None) -> None:
    """Raise naming each bad detail: a phone needs 7 to 15 digits, an email an @ and a dot.
    ``errors`` found by the caller are raised with them."""
    errors = dict(errors or {})
    if email and not EMAIL_RE.match(email.strip()):
        errors["contact_email"] = _("“%(value)s” is not an email address.") % {"value": email}
    if phone and not phone_is_valid(phone):
        errors["contact_phone"] = _("“%(value)s” is not a phone number.") % {"value": phone}
    if errors:
        raise InvalidInput(
            _("The client's details are invalid: fix the marked fields."), fields=errors
        )


_CONTACT_COLUMNS = tuple(field.name for field in Contact._meta.concrete_fields)


class ContactBook:
    """Clients found by normalised phone or email: the matching rule of every new deal.

    A phone match wins over an email match, and among several clients with the
    same phone the oldest. ``preload`` reads every client a batch may need in
    one query; ``find_or_new`` then returns the known client (blank details
    filled in) or a new, unsaved one, remembered so that the same client twice
    in a batch is one client. ``save`` writes the new and changed ones.
    """

    def __init__(self) -> None:
        self._by_phone: dict[str, Contact] = {}
        self._by_email: dict[str, Contact] = {}
        self._looked_up: set[tuple[str, str]] = set()
        self._new: list[Contact] = []
        self._filled: dict[int, Contact] = {}

    def preload(self, details: Iterable[tuple[str, str]]) -> list[Contact]:
        """Read the clients matching any of these (phone, email); return all of them."""
        phones, emails = set(), set()
        for phone, email in details:
            phones.add(normalize_phone(phone))
            emails.add(normalize_email(email))
        phones.discard("")
        emails.discard("")
        self._looked_up |= {("phone", p) for p in phones} | {("email", e) for e in emails}
        if not (phones or emails):
            return []
        # Hand-written: this runs for every lead the API takes.
        conditions, params = [], []
        for column, values in (("phone_normalized", phones), ("email_normalized", emails)):
            if values:
                conditions.append(f"c.{column} IN ({placeholders(len(values))})")
                params += sorted(values)
        found = fetch_objects(
            Contact,
            _CONTACT_COLUMNS,
            f"SELECT {select_list(Contact, _CONTACT_COLUMNS, 'c')} FROM {Contact._meta.db_table} c "
            f"WHERE {' OR '.join(conditions)} ORDER BY c.id",
            params,
        )
        for contact in found:
            self._remember(contact)
        return found

    def _remember(self, contact: Contact) -> None:
        if contact.phone_normalized:
            self._by_phone.setdefault(contact.phone_normalized, contact)
        if contact.email_normalized:
            self._by_email.setdefault(contact.email_normalized, contact)

    def _known(self, kind: str, value: str) -> Contact | None:
        index = self._by_phone if kind == "phone" else self._by_email
        if value and (kind, value) not in self._looked_up and value not in index:
            self._looked_up.add((kind, value))
            field = f"{kind}_normalized"
            contact = Contact.objects.filter(**{field: value}).order_by("id").first()
            if contact is not None:
                self._remember(contact)
        return index.get(value) if value else None

    def find_or_new(
        self, *, name: str = "", phone: str = "", email: str = "", company: str = "", at=None
    ) -> Contact:
        reachable = name or phone or email or company
        _contact_check(
            phone=phone,
            email=email,
            errors={}
            if reachable
            else {"contact_name": _("Give the client a name, phone or email.")},
        )
        phone_n, email_n = normalize_phone(phone), normalize_email(email)
        contact = self._known("phone", phone_n) or self._known("email", email_n)
        if contact is None:
            contact = Contact(
                name=(name or company or phone or email).strip(),
                phone=phone.strip(),
                email=email.strip(),
                company=company.strip(),
                phone_normalized=phone_n,
                email_normalized=email_n,
                created_at=at or timezone.now(),
            )
            self._new.append(contact)
            self._remember(contact)
            return contact
        filled = False
        for attr, value in (("phone", phone), ("email", email), ("company", company)):
            if value and not getattr(contact, attr):
                setattr(contact, attr, value.strip())
                filled = True
        if filled:
            contact.phone_normalized = normalize_phone(contact.phone)
            contact.email_normalized = normalize_email(contact.email)
            self._remember(contact)
            if contact.pk is not None:
                self._filled[contact.pk] = contact
        return contact

    def save(self, used: Iterable[Contact] | None = None) -> None:
        """Write the new clients and the filled-in ones (only those in ``used``, if given)."""
        keep = None if used is None else {id(contact) for contact in used}
        insert_objects_with_ids([c for c in self._new if keep is None or id(c) in keep])
        update_rows(
            Contact,
            ["phone", "email", "company", "phone_normalized", "email_normalized"],
            [
                (c.phone, c.email, c.company, c.phone_normalized, c.email_normalized, c.pk)
                for c in self._filled.values()
                if keep is None or id(c) in keep
            ],
        )
        self._new, self._filled = [], {}


def contact_find_or_create(
    *, name: str = "", phone: str = "", email: str = "", company: str = "", at=None
) -> Contact:
    """The client with this phone or email, or a new one. Blank details are filled in."""
    book = ContactBook()
    contact = book.find_or_new(name=name, phone=phone, email=email, company=company, at=at)
    book.save()
    return contact


# ---------------------------------------------------------------- helpers


def _lock(deal: Deal | int) -> Deal:
    """Lock the deal's row and read it fresh.

    Callers read the clock (``at``) only after this returns, so that the history
    of concurrent changes is in the order the locks were taken.
    """
    deal_id = deal.pk if isinstance(deal, Deal) else deal
    # Lock the bare row first, then read it with its relations. With the joins inside
    # the FOR UPDATE, PostgreSQL re-checks a row that a concurrent transaction has just
    # moved against the old joined stage and drops it: a spurious "does not exist".
    if not Deal.objects.select_for_update().filter(pk=deal_id).values_list("pk", flat=True):
        raise NotFound(_("Deal %(id)s does not exist.") % {"id": deal_id})
    return Deal.objects.select_related("funnel", "stage", "owner", "contact").get(pk=deal_id)


def _check_actor(actor: User | None, deal: Deal) -> None:
    if actor is not None and not user_can_change_deal(actor, deal):
        raise Forbidden(_("You cannot change this deal: it belongs to another manager."))


def _check_version(deal: Deal, expected_version: int | None) -> None:
    if expected_version is not None and int(expected_version) != deal.version:
        raise Conflict(
            _("Someone changed this deal while you were looking at it. Reload it and try again.")
        )


def _lock_for_change(
    deal: Deal | int,
    *,
    actor: User | None,
    expected_version: int | None,
    at: datetime.datetime | None = None,
) -> tuple[Deal, datetime.datetime]:
    """Lock and re-read the deal, then check the actor's right and the version.

    The clock is read after the lock, so concurrent changes get their history
    in the order the locks were taken.
    """
    deal = _lock(deal)
    at = at or timezone.now()
    _check_actor(actor, deal)
    _check_version(deal, expected_version)
    return deal, at


def _check_owner_active(owner: User) -> None:
    if not owner.is_active:
        raise InvalidInput(
            _("%(user)s is deactivated and cannot own deals.") % {"user": owner},
            fields={"owner": _("Choose an active user.")},
        )


def works_funnel(user: User, funnel: Funnel, member_ids: Iterable[int] | None = None) -> bool:
    """Whether ``user`` works ``funnel``: heads and admins work every funnel, others those
    they are members of. ``member_ids``: the funnel's members, when the caller has them."""
    if user.is_admin_role or user.is_head:
        return True
    if member_ids is None:
        return funnel.members.filter(pk=user.pk).exists()
    return user.pk in member_ids


def owner_check(
    owner: User | None, funnel: Funnel, member_ids: Iterable[int] | None = None
) -> None:
    """An owner given to a deal is an active user who works its funnel (heads and admins:
    any). ``member_ids``: the funnel's members, when the caller has them already."""
    if owner is None:
        return
    _check_owner_active(owner)
    if not works_funnel(owner, funnel, member_ids):
        raise InvalidInput(
            _("%(user)s does not work the funnel “%(funnel)s”.")
            % {"user": owner, "funnel": funnel.name},
            fields={"owner": _("Choose a member of the funnel.")},
        )


def _field_label(funnel: Funnel, name: str) -> str:
    if name in REQUIRABLE_DEAL_FIELDS:
        return str(REQUIRABLE_DEAL_FIELDS[name])
    for field in funnel.custom_fields.all():
        if field.key == name:
            return field.label
    return name


def _check_required(deal: Deal, stages: Iterable[Stage], action: str) -> None:
    """Raise naming every field required by ``stages`` that the deal lacks."""
    missing: dict[str, str] = {}
    for stage in stages:
        for name in stage.required_fields or []:
            if name not in missing and not deal.field_is_filled(name):
                missing[name] = _("Required by the stage “%(stage)s”.") % {"stage": stage.name}
    if missing:
        labels = ", ".join(_field_label(deal.funnel, name) for name in missing)
        raise InvalidInput(
            _("To %(action)s, fill in: %(fields)s.") % {"action": action, "fields": labels},
            fields=missing,
        )


def _parse_amount(raw) -> Decimal | None:
    if raw is None or raw == "":
        return None
    try:
        amount = Decimal(str(raw).replace(" ", "").replace(",", "."))
    except InvalidOperation:
        raise InvalidInput(
            _("The amount is not a number."),
            fields={"amount": _("“%(value)s” is not a number.") % {"value": raw}},
        ) from None
    if not amount.is_finite() or amount < 0 or amount >= Decimal("1e12"):
        raise InvalidInput(
            _("The amount must be zero or more."),
            fields={"amount": _("Enter an amount from 0 to 999 999 999 999.")},
        )
    return amount.quantize(Decimal("0.01"))


def _parse_date(raw, name: str) -> datetime.date | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, datetime.date):
        return raw
    try:
        return datetime.date.fromisoformat(str(raw))
    except ValueError:
        raise InvalidInput(
            _("The date is invalid."),
            fields={name: _("“%(value)s” is not a date (YYYY-MM-DD).") % {"value": raw}},
        ) from None


def _parse_datetime(raw, name: str) -> datetime.datetime | None:
    if raw is None or raw == "":
        return None
    value = raw
    if not isinstance(raw, datetime.datetime):
        try:
            value = datetime.datetime.fromisoformat(str(raw))
        except ValueError:
            raise InvalidInput(
                _("The date and time are invalid."),
                fields={name: _("“%(value)s” is not a date and time.") % {"value": raw}},
            ) from None
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value


def _apply_values(
    deal: Deal,
    values: dict,
    *,
    at: datetime.datetime | None = None,
    contacts: ContactBook | None = None,
) -> list[str]:
    """Validate and set editable fields and client details; return changed field names.

    A deal without a client gets one from ``contacts`` (unsaved if new: the
    caller saves the book), or, without a book, found or created at once.
    """
    unknown = set(values) - set(EDITABLE_FIELDS) - set(CONTACT_FIELDS)
    if unknown:
        raise InvalidInput(
            _("Unknown deal fields: %(names)s.") % {"names": ", ".join(sorted(unknown))},
            fields={name: _("No such field.") for name in unknown},
        )
    changed: list[str] = []
    for name in EDITABLE_FIELDS:
        if name not in values:
            continue
        raw = values[name]
        if name == "title":
            value = (raw or "").strip()
            if not value:
                raise InvalidInput(
                    _("A deal needs a title."), fields={"title": _("Enter a title.")}
                )
        elif name == "amount":
            value = _parse_amount(raw)
        elif name == "expected_close_date":
            value = _parse_date(raw, name)
        elif name == "temperature":
            value = raw or ""
            if value not in ("", *Temperature.values):
                raise InvalidInput(
                    _("Temperature is warm or cold."),
                    fields={"temperature": _("Choose warm or cold.")},
                )
        elif name == "custom_fields":
            cleaned = custom_values_clean(deal.funnel, raw or {})
            value = {**(deal.custom_fields or {}), **cleaned}
            value = {k: v for k, v in value.items() if v is not None}
        else:
            value = (raw or "").strip()
        if getattr(deal, name) != value:
            setattr(deal, name, value)
            changed.append(name)
    contact_values = {
        attr: values[key] or "" for key, attr in CONTACT_FIELDS.items() if key in values
    }
    if contact_values:
        if deal.contact_id is None and contacts is not None:
            deal.contact = contacts.find_or_new(**contact_values, at=at)
            changed.append("contact")
        elif deal.contact_id is None:
            deal.contact = contact_find_or_create(**contact_values, at=at)
            changed.append("contact")
        else:
            _contact_update(deal.contact, contact_values)
    return changed


def _contact_update(contact: Contact, values: dict) -> None:
    unnamed = "name" in values and not values["name"].strip()
    _contact_check(
        phone=values.get("phone", ""),
        email=values.get("email", ""),
        errors={"contact_name": _("The client needs a name.")} if unnamed else {},
    )
    for attr, value in values.items():
        setattr(contact, attr, value.strip())
    contact.phone_normalized = normalize_phone(contact.phone)
    contact.email_normalized = normalize_email(contact.email)
    contact.save(update_fields=[*values, "phone_normalized", "email_normalized"])


def _create_stage_tasks(
    deals: list[Deal], templates: Iterable[TaskTemplate], at: datetime.datetime
) -> None:
    """The tasks a stage's templates give each deal entering it, for its owner."""
    templates = list(templates)
    insert_rows(  # rows, not Task instances: a batch of leads makes hundreds
        Task,
        ["deal", "assignee", "title", "due_at", "done_at", "created_at", "created_by"],
        [
            (
                deal.pk,
                deal.owner_id,
                template.title,
                at + datetime.timedelta(minutes=template.due_in_minutes),
                None,
                at,
                None,
            )
            for deal in deals
            for template in templates
        ],
    )


def _save(deal: Deal, fields: Iterable[str]) -> None:
    deal.version += 1
    deal.save(update_fields=sorted({*fields, "version", "updated_at"}))


def _set_status(
    deal: Deal,
    to_status: str,
    *,
    actor: User | None,
    at: datetime.datetime,
    loss_reason: LossReason | None = None,
    comment: str = "",
    next_contact_at: datetime.datetime | None = None,
) -> list[str]:
    """Append the StatusChange and set the status; return other deal fields it changed."""
    StatusChange.objects.create(
        deal=deal,
        from_status=deal.status,
        to_status=to_status,
        at=at,
        actor=actor,
        stage=deal.stage,
        loss_reason=loss_reason,
        comment=comment,
        next_contact_at=next_contact_at,
    )
    changed = facts.record_status_changed(deal, deal.status, to_status, actor, at)
    deal.status = to_status
    return changed


# ---------------------------------------------------------------- deals

# Every new deal reads its funnel's stages and their task templates: one hand-written
# SELECT, the same rows as ``funnel.stages.order_by("position")`` and each
# ``stage.task_templates.all()`` (with the funnel's row, for the lead intake).
_STAGE_COLUMNS = tuple(field.name for field in Stage._meta.concrete_fields)
_TEMPLATE_COLUMNS = tuple(field.name for field in TaskTemplate._meta.concrete_fields)


_FUNNEL_COLUMNS = tuple(field.name for field in Funnel._meta.concrete_fields)


@dataclasses.dataclass
class FunnelLayout:
    """A funnel with its stages (by position) and each stage's task templates (by id)."""

    funnel: Funnel
    stages: list[Stage]
    templates: dict[int, list[TaskTemplate]]


def funnel_layout(funnel_id: int) -> FunnelLayout | None:
    """The funnel with its stages and templates, in one query; None if there is none."""
    rows = fetch_joined(
        [(Funnel, _FUNNEL_COLUMNS), (Stage, _STAGE_COLUMNS), (TaskTemplate, _TEMPLATE_COLUMNS)],
        f"SELECT {select_list(Funnel, _FUNNEL_COLUMNS, 'f')}, "
        f"{select_list(Stage, _STAGE_COLUMNS, 's')}, "
        f"{select_list(TaskTemplate, _TEMPLATE_COLUMNS, 't')} "
        f"FROM {Funnel._meta.db_table} f "
        f"LEFT JOIN {Stage._meta.db_table} s ON s.funnel_id = f.id "
        f"LEFT JOIN {TaskTemplate._meta.db_table} t ON t.stage_id = s.id "
        "WHERE f.id = %s ORDER BY s.position, t.id",
        [funnel_id],
    )
    if not rows:
        return None
    stages: dict[int, Stage] = {}
    templates: dict[int, list[TaskTemplate]] = {}
    for _funnel, stage, template in rows:
        if stage is None:  # a funnel without stages
            continue
        stage = stages.setdefault(stage.pk, stage)
        templates.setdefault(stage.pk, [])
        if template is not None:
            templates[stage.pk].append(template)
    return FunnelLayout(funnel=rows[0][0], stages=list(stages.values()), templates=templates)


class DealOpener:
    """Opens deals in one funnel at one stage: the rules of a new deal, the writes in bulk.

    ``prepare`` checks one deal in memory and raises the errors ``deal_create``
    raises, writing nothing. ``save`` writes the prepared deals with their first
    StageChange, analytics summaries, the stage's tasks and webhook deliveries
    in a few statements, whatever their number. ``deal_create`` opens one deal
    with it; lead intake opens a whole batch.
    """

    def __init__(
        self,
        funnel: Funnel,
        *,
        stage: Stage | None = None,
        at: datetime.datetime | None = None,
        contacts: ContactBook | None = None,
        layout: FunnelLayout | None = None,
    ) -> None:
        """``layout``: the funnel's stages and templates, when the caller read them."""
        self.funnel = funnel
        self.at = at or timezone.now()
        self.contacts = contacts if contacts is not None else ContactBook()
        if not funnel.is_active:
            raise InvalidInput(_("The funnel “%(name)s” is archived.") % {"name": funnel.name})
        layout = layout or funnel_layout(funnel.pk)
        stages, self._templates = layout.stages, layout.templates
        if not stages:
            raise InvalidInput(_("The funnel has no stages yet."))
        if stage is None:
            stage = stages[0]
        elif stage.funnel_id != funnel.pk:
            raise InvalidInput(
                _("The stage “%(stage)s” is not in the funnel “%(funnel)s”.")
                % {"stage": stage.name, "funnel": funnel.name},
                fields={"stage": _("Choose a stage of this funnel.")},
            )
        self.stage = stage
        self._required_by = [s for s in stages if s.position <= stage.position]
        self._members: frozenset[int] | None = None

    @property
    def member_ids(self) -> frozenset[int]:
        """The funnel's members, read once for all the deals this opener prepares."""
        if self._members is None:
            through = Funnel.members.through._meta.db_table
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT user_id FROM {through} WHERE funnel_id = %s", [self.funnel.pk]
                )
                self._members = frozenset(row[0] for row in cursor.fetchall())
        return self._members

    def prepare(
        self,
        *,
        actor: User | None,
        title: str,
        owner: User | None = None,
        contact: Contact | None = None,
        values: dict | None = None,
        external_id: str | None = None,
    ) -> Deal:
        """A checked, unsaved deal. Its owner may still be set before ``save``."""
        if owner is not None:
            _check_owner_active(owner)
        at = self.at
        deal = Deal(
            funnel=self.funnel,
            stage=self.stage,
            title="",
            owner=owner,
            contact=contact,
            external_id=external_id or None,
            created_at=at,
            stage_entered_at=at,
        )
        _check_actor(actor, deal)
        _apply_values(deal, {"title": title, **(values or {})}, at=at, contacts=self.contacts)
        _check_required(
            deal,
            self._required_by,
            _("open the deal at “%(stage)s”") % {"stage": self.stage.name},
        )
        deal.reached_position = self.stage.position
        return deal

    def save(
        self,
        deals: list[Deal],
        *,
        actor: User | None = None,
        before_deals: Callable[[], None] | None = None,
    ) -> list[Deal]:
        """Write the prepared deals (and the clients they name) in order; return them.

        ``before_deals`` runs once the clients are written, just before the deals:
        the intake hands out its round-robin turns there, so that the funnel's turn
        stays locked for the shortest time. An external id already taken in the
        funnel raises ``Conflict``; the caller's transaction must then roll back
        (``deal_create``'s own atomic block does).
        """
        if not deals:
            return deals
        with writes_together():  # one round trip for the rows below on PostgreSQL
            known_clients = {deal.contact.pk for deal in deals if deal.contact and deal.contact.pk}
            self.contacts.save(used=[deal.contact for deal in deals if deal.contact is not None])
            repeat = facts.repeat_clients(known_clients)  # a new client has no sale yet
            if before_deals is not None:
                before_deals()
            for deal in deals:
                deal.is_repeat_client = deal.contact is not None and deal.contact.pk in repeat
            try:
                insert_objects_with_ids(deals)
            except IntegrityError as error:
                # The caller's transaction (or savepoint) is rolled back with this error.
                taken = sorted({deal.external_id for deal in deals if deal.external_id})
                if taken and "external_id" in str(error):
                    raise Conflict(
                        _("The funnel already has a deal with the external id “%(id)s”.")
                        % {"id": ", ".join(taken)},
                        fields={"external_id": _("Use another id, or update the existing deal.")},
                    ) from None
                raise
            at = self.at
            insert_rows(
                StageChange,
                ["deal", "from_stage", "to_stage", "at", "actor"],
                [(deal.pk, None, self.stage.pk, at, actor.pk if actor else None) for deal in deals],
            )
            facts.record_created(deals, at)
            _create_stage_tasks(deals, self._templates.get(self.stage.pk, []), at)
            webhooks_dispatch_many(deals=deals, event=WebhookEvent.CREATED)
        return deals


@transaction.atomic
def deal_create(
    *,
    actor: User | None,
    funnel: Funnel,
    title: str,
    stage: Stage | None = None,
    owner: User | None = None,
    contact: Contact | None = None,
    values: dict | None = None,
    external_id: str | None = None,
    at: datetime.datetime | None = None,
) -> Deal:
    """Open a deal at the funnel's first stage (or ``stage``) and write its first StageChange.

    ``values`` holds editable fields and client details (``contact_name``,
    ``contact_phone``, ``contact_email``, ``company``). The required fields of
    every stage up to the entry stage apply; the entry stage's tasks are made.
    A manager may create deals only for himself (or unassigned in his funnels).
    """
    opener = DealOpener(funnel, stage=stage, at=at)
    deal = opener.prepare(
        actor=actor,
        title=title,
        owner=owner,
        contact=contact,
        values=values,
        external_id=external_id,
    )
    return opener.save([deal], actor=actor)[0]


@transaction.atomic
def deal_update(
    *, actor: User | None, deal: Deal | int, values: dict, expected_version: int | None = None
) -> Deal:
    """Edit a deal's fields and client details. Stage and status have their own functions."""
    deal, _at = _lock_for_change(deal, actor=actor, expected_version=expected_version)
    changed = _apply_values(deal, values)
    if changed:
        _save(deal, changed)
    if "contact" in changed:
        facts.record_client_changed(deal)
    return deal


@transaction.atomic
def deal_move_to_stage(
    *,
    actor: User | None,
    deal: Deal | int,
    stage: Stage,
    values: dict | None = None,
    expected_version: int | None = None,
    at: datetime.datetime | None = None,
) -> Deal:
    """Move a deal to any stage of its funnel: forward, backward or skipping.

    ``values`` fills fields in the same step (the board's dialog). Entering
    stage k needs the required fields of stages 1..k; the error names every
    missing one and nothing is saved. The entered stage's tasks are made.
    """
    deal, at = _lock_for_change(deal, actor=actor, expected_version=expected_version, at=at)
    if deal.is_closed:
        raise InvalidInput(
            _("The deal is %(status)s. Reopen it before moving it.")
            % {"status": deal.get_status_display().lower()}
        )
    if stage.funnel_id != deal.funnel_id:
        raise InvalidInput(
            _("The stage “%(stage)s” is not in this deal's funnel.") % {"stage": stage.name},
            fields={"stage": _("Choose a stage of the deal's funnel.")},
        )
    if stage.pk == deal.stage_id:
        raise InvalidInput(_("The deal is already at “%(stage)s”.") % {"stage": stage.name})
    changed = _apply_values(deal, values or {})
    stages = deal.funnel.stages.filter(position__lte=stage.position).order_by("position")
    _check_required(deal, stages, _("move to “%(stage)s”") % {"stage": stage.name})
    from_stage = deal.stage
    changed += facts.record_stage_entered(deal, from_stage, stage, actor, at)
    deal.stage = stage
    deal.stage_entered_at = at
    _save(deal, [*changed, "stage", "stage_entered_at"])
    StageChange.objects.create(deal=deal, from_stage=from_stage, to_stage=stage, at=at, actor=actor)
    _create_stage_tasks([deal], stage.task_templates.all(), at)
    webhooks_dispatch(deal=deal, event=WebhookEvent.MOVED)
    return deal


def _check_open(deal: Deal, action: str) -> None:
    if deal.is_closed:
        raise InvalidInput(
            _("The deal is already %(status)s; reopen it to %(action)s it.")
            % {"status": deal.get_status_display().lower(), "action": action}
        )


@transaction.atomic
def deal_win(
    *,
    actor: User | None,
    deal: Deal | int,
    values: dict | None = None,
    expected_version: int | None = None,
    at: datetime.datetime | None = None,
) -> Deal:
    """Close a deal as won. Every stage's required fields must be filled."""
    deal, at = _lock_for_change(deal, actor=actor, expected_version=expected_version, at=at)
    _check_open(deal, _("win"))
    changed = _apply_values(deal, values or {})
    _check_required(deal, deal.funnel.stages.order_by("position"), _("win the deal"))
    changed += _set_status(deal, DealStatus.WON, actor=actor, at=at)
    deal.closed_at = at
    deal.next_contact_at = None
    _save(deal, [*changed, "status", "closed_at", "next_contact_at"])
    webhooks_dispatch(deal=deal, event=WebhookEvent.WON)
    return deal


@transaction.atomic
def deal_lose(
    *,
    actor: User | None,
    deal: Deal | int,
    loss_reason: LossReason | int | None,
    comment: str = "",
    expected_version: int | None = None,
    at: datetime.datetime | None = None,
) -> Deal:
    """Close a deal as lost. An active loss reason of the deal's funnel is mandatory;
    a reason marked ``requires_comment`` (“Other”) needs a comment."""
    deal, at = _lock_for_change(deal, actor=actor, expected_version=expected_version, at=at)
    _check_open(deal, _("lose"))
    comment = (comment or "").strip()
    if loss_reason in (None, ""):
        raise InvalidInput(
            _("A deal is closed as lost only with its reason: choose one."),
            fields={"loss_reason": _("Choose a loss reason.")},
        )
    if not isinstance(loss_reason, LossReason):
        loss_reason = LossReason.objects.filter(pk=loss_reason).first()
    if loss_reason is None or loss_reason.funnel_id != deal.funnel_id or not loss_reason.is_active:
        raise InvalidInput(
            _("Choose one of the funnel's current loss reasons."),
            fields={"loss_reason": _("This reason is not available for this funnel.")},
        )
    if loss_reason.requires_comment and not comment:
        raise InvalidInput(
            _("The reason “%(reason)s” needs a comment: say what happened.")
            % {"reason": loss_reason.name},
            fields={"loss_comment": _("Write a comment.")},
        )
    changed = _set_status(
        deal, DealStatus.LOST, actor=actor, at=at, loss_reason=loss_reason, comment=comment
    )
    deal.loss_reason = loss_reason
    deal.loss_comment = comment
    deal.closed_at = at
    deal.next_contact_at = None
    _save(deal, [*changed, "status", "loss_reason", "loss_comment", "closed_at", "next_contact_at"])
    webhooks_dispatch(deal=deal, event=WebhookEvent.LOST)
    return deal


@transaction.atomic
def deal_postpone(
    *,
    actor: User | None,
    deal: Deal | int,
    next_contact_at: datetime.datetime | str | None,
    comment: str = "",
    expected_version: int | None = None,
    at: datetime.datetime | None = None,
) -> Deal:
    """Put a deal on hold until ``next_contact_at``, which must be in the future.

    A postponed deal postponed again only gets the new date.
    """
    deal, at = _lock_for_change(deal, actor=actor, expected_version=expected_version, at=at)
    _check_open(deal, _("postpone"))
    when = _parse_datetime(next_contact_at, "next_contact_at")
    if when is None:
        raise InvalidInput(
            _("A postponed deal needs the date of the next contact."),
            fields={"next_contact_at": _("Choose when to contact the client.")},
        )
    if when <= at:
        raise InvalidInput(
            _("The next contact must be in the future."),
            fields={"next_contact_at": _("Choose a later date.")},
        )
    fields = ["next_contact_at"]
    if deal.status != DealStatus.POSTPONED:
        fields += _set_status(
            deal,
            DealStatus.POSTPONED,
            actor=actor,
            at=at,
            comment=(comment or "").strip(),
            next_contact_at=when,
        )
        fields.append("status")
    deal.next_contact_at = when
    _save(deal, fields)
    if "status" in fields:  # a new date for a postponed deal is not a new event
        webhooks_dispatch(deal=deal, event=WebhookEvent.POSTPONED)
    return deal


@transaction.atomic
def deal_reopen(
    *,
    actor: User | None,
    deal: Deal | int,
    comment: str = "",
    expected_version: int | None = None,
    at: datetime.datetime | None = None,
) -> Deal:
    """Return a won, lost or postponed deal to work, on the stage it was on."""
    deal, at = _lock_for_change(deal, actor=actor, expected_version=expected_version, at=at)
    if deal.status == DealStatus.OPEN:
        raise InvalidInput(_("The deal is already open."))
    changed = _set_status(
        deal, DealStatus.OPEN, actor=actor, at=at, comment=(comment or "").strip()
    )
    deal.loss_reason = None
    deal.loss_comment = ""
    deal.closed_at = None
    deal.next_contact_at = None
    _save(deal, [*changed, "status", "loss_reason", "loss_comment", "closed_at", "next_contact_at"])
    return deal


@transaction.atomic
def deal_assign(
    *,
    actor: User | None,
    deal: Deal | int,
    owner: User | None,
    expected_version: int | None = None,
) -> Deal:
    """Give a deal to another owner (or none). Open tasks follow the deal."""
    deal, _at = _lock_for_change(deal, actor=actor, expected_version=expected_version)
    owner_check(owner, deal.funnel)
    if deal.owner_id == (owner.pk if owner else None):
        return deal
    Task.objects.filter(deal=deal, done_at__isnull=True, assignee_id=deal.owner_id).update(
        assignee=owner
    )
    deal.owner = owner
    _save(deal, ["owner"])
    facts.record_owner_changed(deal)
    return deal


@transaction.atomic
def deal_resume_postponed(*, deal: Deal | int, at: datetime.datetime | None = None) -> bool:
    """The next-contact date has come: back to open, with a task for the owner.

    Returns False (and does nothing) if the deal is no longer due, so the
    scheduled task can run twice safely.
    """
    deal = _lock(deal)
    at = at or timezone.now()
    if deal.status != DealStatus.POSTPONED or deal.next_contact_at > at:
        return False
    due = deal.next_contact_at
    _set_status(deal, DealStatus.OPEN, actor=None, at=at, comment=_("The postponed date has come."))
    deal.next_contact_at = None
    _save(deal, ["status", "next_contact_at"])
    Task.objects.create(
        deal=deal,
        assignee=deal.owner,
        title=_("Contact the client: the postponed deal is due"),
        due_at=due,
        created_at=at,
    )
    return True


def deals_resume_due_postponed(*, at: datetime.datetime | None = None) -> int:
    """Resume every postponed deal whose date has come; one transaction per deal."""
    at = at or timezone.now()
    due_ids = list(
        Deal.objects.filter(status=DealStatus.POSTPONED, next_contact_at__lte=at).values_list(
            "id", flat=True
        )
    )
    return sum(1 for deal_id in due_ids if deal_resume_postponed(deal=deal_id, at=at))


# ---------------------------------------------------------------- tasks and notes


@transaction.atomic
def task_create(
    *,
    actor: User | None,
    deal: Deal | int,
    title: str,
    due_at: datetime.datetime | str,
    assignee: User | None = None,
) -> Task:
    deal = _lock(deal)
    _check_actor(actor, deal)
    title = (title or "").strip()
    errors = {}
    if not title:
        errors["title"] = _("Enter what to do.")
    try:
        due = _parse_datetime(due_at, "due_at")
    except InvalidInput as exc:
        errors.update(exc.fields)
        due = None
    if due is None and "due_at" not in errors:
        errors["due_at"] = _("Choose when the task is due.")
    if errors:
        raise InvalidInput(_("The task has errors: fix the marked fields."), fields=errors)
    return Task.objects.create(
        deal=deal, assignee=assignee or deal.owner, title=title, due_at=due, created_by=actor
    )


@transaction.atomic
def task_complete(
    *, actor: User | None, task: Task | int, at: datetime.datetime | None = None
) -> Task:
    at = at or timezone.now()
    task_id = task.pk if isinstance(task, Task) else task
    try:
        task = Task.objects.select_for_update(of=("self",)).select_related("deal").get(pk=task_id)
    except Task.DoesNotExist:
        raise NotFound(_("Task %(id)s does not exist.") % {"id": task_id}) from None
    if actor is not None and task.assignee_id != actor.pk:
        _check_actor(actor, task.deal)
    if task.done_at is None:
        task.done_at = at
        task.save(update_fields=["done_at"])
        _record_activity(task.deal, actor, at)
    return task


def _record_activity(deal: Deal, actor: User | None, at: datetime.datetime) -> None:
    if facts.record_activity(deal, actor, at):
        Deal.objects.filter(pk=deal.pk, first_response_at__isnull=True).update(first_response_at=at)


@transaction.atomic
def note_add(
    *, actor: User | None, deal: Deal | int, text: str, at: datetime.datetime | None = None
) -> Note:
    deal = _lock(deal)
    _check_actor(actor, deal)
    text = (text or "").strip()
    if not text:
        raise InvalidInput(_("A note cannot be empty."), fields={"text": _("Write something.")})
    at = at or timezone.now()
    note = Note.objects.create(deal=deal, author=actor, text=text, created_at=at)
    _record_activity(deal, actor, at)
    return note


def notes_add_system(*, notes: list[tuple[Deal, str]], at: datetime.datetime) -> None:
    """Notes written by the system (lead intake), in one statement. The system is no
    response to the client, so no first-response time is recorded (as ``note_add``
    with ``actor=None``)."""
    insert_rows(
        Note,
        ["deal", "author", "text", "created_at"],
        [(deal.pk, None, text.strip(), at) for deal, text in notes],
    )
