"""Lead intake: every good lead becomes exactly one deal, every bad one a clear error.

Site forms, ad platforms and telephony post leads through the API
(``POST /api/v1/leads/``); this module is the one place that decides what
becomes of them. ``lead_intake`` runs one request (one lead or a batch) in one
transaction; single leads that other threads of the process post at the same
moment may share it (``_GroupCommit``: a lead's cost is mostly its round trips
to PostgreSQL, the same for one lead or several), each with the outcome it
would have had alone:

1. With an ``Idempotency-Key`` it first inserts the request's
   ``IntakeIdempotencyRecord`` (``ON CONFLICT DO NOTHING``). A concurrent
   request with the same key blocks on the unique constraint until the first
   commits, then inserts nothing and returns the stored result: a retry never
   makes a second deal, even when both arrive at the same moment.
2. On PostgreSQL it takes advisory locks on the leads' external ids, phones
   and emails, all at once in a fixed order: two requests carrying the same
   lead or the same client run one after the other, and any others in
   parallel.
3. Per funnel (``_FunnelBatch``), in one query each, it reads the external ids
   already taken and the open deals of the leads' clients. Then each lead in
   order: a known external id gets its original outcome back; a lead whose
   normalised phone or email matches an open deal of the funnel (or a deal
   opened earlier in the batch) is attached to it as a note; any other is
   checked by ``DealOpener.prepare`` (the rules of ``deal_create``). A bad lead
   of a batch is reported at its index and the others go in.
4. The new clients are written; only then is the funnel's ``FunnelIntakeState``
   row locked, until commit, to hand the round-robin turns to the new deals
   without an owner (a rejected lead takes no turn), and the rest is written in
   bulk: a batch of 100 leads costs about the statements of one.

Deals are created by the system (``actor=None``); who may post into which
funnel is checked here, from the ``IntakeClient``.
"""

import contextlib
import contextvars
import dataclasses
import logging
import os
import threading
import zlib
from collections.abc import Sequence
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from accounts.models import ApiKey, Role, User
from crm.db import (
    fetch_joined,
    fetch_objects,
    insert_rows,
    placeholders,
    select_list,
    sent_with_next,
    update_rows,
    write_later,
    writes_together,
)
from crm.errors import DomainError, Forbidden, InvalidInput
from deals.models import (
    Deal,
    DealStatus,
    FunnelIntakeState,
    IntakeIdempotencyRecord,
    LeadOutcome,
    LeadReceipt,
)
from deals.services import (
    ContactBook,
    DealOpener,
    FunnelLayout,
    funnel_layout,
    normalize_email,
    normalize_phone,
    notes_add_system,
    owner_check,
    works_funnel,
)
from funnels.models import Funnel

logger = logging.getLogger(__name__)

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
    "owner": "owner_id",
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


@dataclasses.dataclass(frozen=True)
class IntakeRequest:
    """One API request: its client, its leads, and its ``Idempotency-Key``."""

    client: IntakeClient
    leads: Sequence[LeadData | InvalidInput]
    idempotency_key: str | None = None
    fingerprint: str = ""
    raise_on_reject: bool = False


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

    A single lead may share its transaction with the single leads that other
    threads of this process post at the same moment (``_GroupCommit``); its
    outcome is the one it would have had alone.
    """
    request = IntakeRequest(client, leads, idempotency_key, fingerprint, raise_on_reject)
    # Only single leads are grouped (a batch of one reports its rejection in its
    # results, so it may not share), and never in the caller's transaction.
    if raise_on_reject and len(leads) == 1 and connection.get_autocommit():
        answer = _group_commit.take(request)
    else:
        answer = _requests_intake([request])[0]
    if isinstance(answer, DomainError):
        raise answer
    return answer


def _requests_intake(requests: Sequence[IntakeRequest]) -> list[IntakeResult | DomainError]:
    """``_take_requests`` in a transaction of its own (or the caller's)."""
    with _own_transaction():
        return _take_requests(requests)


# Whether the intake's transaction is its own (not inside a caller's): only then may
# its round-robin turns be taken apart (``_TurnTaker``).
_turns_apart: contextvars.ContextVar[bool] = contextvars.ContextVar("turns_apart", default=False)


@contextlib.contextmanager
def _own_transaction():
    own = connection.vendor == "postgresql" and connection.get_autocommit()
    token = _turns_apart.set(own)
    try:
        with transaction.atomic():
            yield
    finally:
        _turns_apart.reset(token)


def _take_requests(requests: Sequence[IntakeRequest]) -> list[IntakeResult | DomainError]:
    """Take several requests in one transaction; return each one's result or error.

    Each request gets what it would have got alone, one after the other in the
    given order: a repeated ``external_id`` gets its first outcome, a client's
    second lead is attached to the deal his first one opened. Where that is not
    sure, for a group (several requests) it raises ``_SplitGroup`` and stores
    nothing: an ``Idempotency-Key`` twice, or a request that fails (a rejected
    single lead stores nothing, not even its idempotency record, but it may have
    touched the client that a later lead of the group uses).
    """
    answers: list[IntakeResult | DomainError | None] = [None] * len(requests)
    records: dict[int, IntakeIdempotencyRecord] = {}
    first_of: dict[tuple[str, str], int] = {}
    repeats: dict[int, int] = {}
    for index, request in enumerate(requests):
        if len(request.leads) > MAX_BATCH:
            answers[index] = InvalidInput(
                _("Send at most %(max)s leads at once.") % {"max": MAX_BATCH},
                fields={"leads": _("Split the batch.")},
            )
        elif request.idempotency_key:
            ident = (request.client.label, request.idempotency_key)
            if ident in first_of:
                repeats[index] = first_of[ident]
            else:
                first_of[ident] = index
    grouped = len(requests) > 1
    if grouped and repeats:
        raise _SplitGroup  # each request runs again alone: a retry waits for its first
    for _ident, index in sorted(first_of.items()):  # one order: two groups never deadlock
        request = requests[index]
        try:
            record = _claim_idempotency_key(
                request.client, request.idempotency_key, request.fingerprint
            )
        except IdempotencyKeyReused as error:
            answers[index] = error
            continue
        if record.result is not None:
            answers[index] = IntakeResult(results=record.result["results"], replayed=True)
        else:
            records[index] = record

    if grouped and any(isinstance(answer, DomainError) for answer in answers):
        raise _SplitGroup  # rolls the group back: each request runs again alone
    taken = [index for index in range(len(requests)) if answers[index] is None]
    entries = [(requests[index].client, lead) for index in taken for lead in requests[index].leads]
    # A group stops at its first rejected lead, before writing anything or taking turns.
    outcomes = iter(_take_leads(entries, split_on_reject=grouped))
    for index in taken:
        request = requests[index]
        answers[index] = _answer(request, [next(outcomes) for _lead in request.leads])
    stored, failed = [], []
    for index, record in records.items():
        answer = answers[index]
        if isinstance(answer, IntakeResult):
            stored.append(({"results": answer.results}, record.pk))
        else:
            failed.append(record.pk)
    if stored:
        update_rows(IntakeIdempotencyRecord, ["result"], stored)
    if failed:  # as if rolled back: a retry takes the request anew
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {_RECORD_TABLE} WHERE id IN ({placeholders(len(failed))})", failed
            )
    return answers


def _answer(
    request: IntakeRequest, outcomes: list[dict | DomainError]
) -> IntakeResult | DomainError:
    if request.raise_on_reject:
        for outcome in outcomes:
            if isinstance(outcome, DomainError):
                return lead_error(outcome)
    results = []
    for index, (lead, outcome) in enumerate(zip(request.leads, outcomes, strict=True)):
        if isinstance(outcome, DomainError):
            outcome = {
                "status": REJECTED,
                "deal_id": None,
                "owner_id": None,
                "external_id": getattr(lead, "external_id", None),
                "replayed": False,
                "error": _error_dict(outcome),
            }
        results.append({"index": index, **outcome})
    return IntakeResult(results=results)


class _SplitGroup(Exception):  # a signal: run each request alone
    """A group whose requests must each run alone (see ``_requests_intake``)."""


class _RunAlone:
    """A group's answer to each of its requests when the group's transaction failed."""


def _refused_by_server(error: Exception) -> bool:
    """PostgreSQL answered with an error (a deferred foreign key, a deadlock): the
    transaction was rolled back. Without an answer (a lost connection) whether a
    commit went in is unknown."""
    return bool(getattr(error.__cause__, "sqlstate", None) or getattr(error, "sqlstate", None))


class _GroupCommit:
    """Group commit: the single leads that a process's threads post at the same moment
    share one transaction.

    A lead's fixed cost is in its round trips to PostgreSQL (the same dozen for one
    lead or a hundred) and the commit's flush to disk, so leads taken together cost
    little more than one. No lead waits for company: a thread that finds no group
    running takes its own lead at once, with any queued beside it, and the leads
    that arrive meanwhile queue for the next group, which one of them runs; a group
    holds requests of one kind (``_Ticket.kind``). The answers are handed out after
    the commit. If the group's transaction fails before its commit, or PostgreSQL
    refuses the commit, nothing of it was stored and each request runs again alone,
    so that one bad request cannot fail the others. If the connection is lost
    during the commit, whether it went in is unknown: every request gets the error.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._running = False  # a group is running

    def take(self, request: IntakeRequest) -> IntakeResult | DomainError:
        ticket = _Ticket(request)
        with self._lock:
            ticket.leads = not self._running
            if ticket.leads:
                self._running = True
            else:
                self._queue.append(ticket)
        if not ticket.leads:
            ticket.ready.wait()  # for its answer, or to run the next group
        if ticket.leads:
            self._run_group(ticket)
        if isinstance(ticket.answer, _RunAlone):
            return _requests_intake([request])[0]
        if isinstance(ticket.answer, BaseException):
            raise ticket.answer
        return ticket.answer

    def _run_group(self, leader: "_Ticket") -> None:
        """Run the leader's request with every one queued of its kind (``_Ticket.kind``),
        in one transaction."""
        with self._lock:
            group = [leader, *(t for t in self._queue if t.kind == leader.kind)]
            self._queue = [t for t in self._queue if t.kind != leader.kind]
        answers = None
        taken = False
        try:
            with _own_transaction():
                answers = _take_requests([ticket.request for ticket in group])
                taken = True
        except Exception as error:
            if len(group) == 1 or (taken and not _refused_by_server(error)):
                # Alone, or the commit itself failed: whether it went in is unknown, so
                # none may run again (a lead without a key would be taken twice).
                answers = [error] * len(group)
            else:
                if not isinstance(error, _SplitGroup):
                    logger.warning(
                        "A group of %s leads failed; each runs alone", len(group), exc_info=True
                    )
                answers = [_RunAlone()] * len(group)
        finally:
            if answers is None:  # this thread is being stopped: the others go on alone
                answers = [_RunAlone()] * len(group)
            with self._lock:  # the first request that queued meanwhile runs the next group
                successor = self._queue.pop(0) if self._queue else None
                if successor is None:
                    self._running = False
                else:
                    successor.leads = True
            if successor is not None:
                successor.ready.set()
            for ticket, answer in zip(group, answers, strict=True):
                ticket.answer = answer
                ticket.ready.set()


@dataclasses.dataclass(eq=False)
class _Ticket:
    request: IntakeRequest
    language: str | None = dataclasses.field(default_factory=translation.get_language)
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    leads: bool = False  # this ticket's thread runs a group
    answer: object = None

    @property
    def kind(self) -> tuple:
        """Tickets of one kind share a group: the same language (of the messages, deal
        titles and notes), client and funnel. One client and funnel make one batch,
        which checks all its leads before it writes anything or takes a turn."""
        lead = self.request.leads[0]
        funnel_id = getattr(lead, "funnel_id", None) or self.request.client.funnel_id
        return (self.language, self.request.client.label, funnel_id)


_group_commit = _GroupCommit()


_RECORD_TABLE = IntakeIdempotencyRecord._meta.db_table
_RECORD_COLUMNS = tuple(field.name for field in IntakeIdempotencyRecord._meta.concrete_fields)


def _claim_idempotency_key(
    client: IntakeClient, key: str, fingerprint: str
) -> IntakeIdempotencyRecord:
    """Insert the key's record, or return the stored one (its ``result`` is then set).

    If another transaction holds the same key, the insert waits for it (the
    unique constraint); once it commits the insert does nothing and the
    committed record is read instead (READ COMMITTED sees it). One that failed
    deleted its record: the insert then goes in.
    """
    record = IntakeIdempotencyRecord(client=client.label, key=key, fingerprint=fingerprint)
    created_at = IntakeIdempotencyRecord._meta.get_field("created_at")
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_RECORD_TABLE} (client, {connection.ops.quote_name('key')}, "
            "fingerprint, created_at) VALUES (%s, %s, %s, %s) "
            f"ON CONFLICT (client, {connection.ops.quote_name('key')}) DO NOTHING RETURNING id",
            [
                client.label,
                key,
                fingerprint,
                created_at.get_db_prep_value(record.created_at, connection),
            ],
        )
        row = cursor.fetchone()
    if row is not None:
        record.pk = row[0]
        return record
    (record,) = fetch_objects(
        IntakeIdempotencyRecord,
        _RECORD_COLUMNS,
        f"SELECT {select_list(IntakeIdempotencyRecord, _RECORD_COLUMNS, 'r')} "
        f"FROM {_RECORD_TABLE} r WHERE r.client = %s AND r.{connection.ops.quote_name('key')} = %s",
        [client.label, key],
    )
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            _(
                "This Idempotency-Key was used for a different request. "
                "Use a new key for a new request."
            ),
            fields={"Idempotency-Key": _("Already used for another request body.")},
        )
    return record


def _take_leads(
    entries: Sequence[tuple[IntakeClient, LeadData | InvalidInput]],
    *,
    split_on_reject: bool = False,
) -> list[dict | DomainError]:
    """Each lead's outcome, in order: the leads of one request or of several, each with
    the client that posted it. With ``split_on_reject`` a rejected lead raises
    ``_SplitGroup`` before anything is written."""
    layouts: dict[int, FunnelLayout | None] = {}
    outcomes: dict[int, dict | DomainError] = {}
    batches: dict[tuple[int, str], tuple[IntakeClient, FunnelLayout, list[int]]] = {}
    for index, (client, lead) in enumerate(entries):
        if isinstance(lead, DomainError):
            outcomes[index] = lead
            continue
        try:
            layout = _target_funnel(client, lead, layouts)
        except DomainError as error:
            outcomes[index] = error
            continue
        batches.setdefault((layout.funnel.pk, client.label), (client, layout, []))[2].append(index)
    if split_on_reject and outcomes:
        raise _SplitGroup
    locks: dict[int, list[LeadData]] = {}
    for (funnel_id, _label), (_client, _layout, indices) in batches.items():
        locks.setdefault(funnel_id, []).extend(entries[index][1] for index in indices)
    lock = _lead_locks(locks)
    # The locks go to PostgreSQL with the first read after them: one round trip.
    with sent_with_next(*lock) if lock else contextlib.nullcontext():
        for key in sorted(batches):  # in funnel id order: two transactions never deadlock
            client, layout, indices = batches[key]
            batch = {index: entries[index][1] for index in indices}
            outcomes.update(
                _FunnelBatch(client, layout, batch).take(split_on_reject=split_on_reject)
            )
    return [outcomes[index] for index in range(len(entries))]


def _target_funnel(
    client: IntakeClient, lead: LeadData, layouts: dict[int, FunnelLayout | None]
) -> FunnelLayout:
    """The lead's funnel, if the client may post into it. ``layouts`` keeps each funnel
    read: one read of a funnel for all the leads of a transaction."""
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
    if funnel_id not in layouts:
        # Hand-written SELECTs here and below: each runs for every request, and building
        # a queryset's SQL would cost more CPU than PostgreSQL spends running it. The
        # funnel comes with its stages and templates, for its DealOpener.
        layouts[funnel_id] = funnel_layout(funnel_id)
    layout = layouts[funnel_id]
    funnel = layout.funnel if layout else None
    if funnel is None:
        raise InvalidInput(
            _("Funnel %(id)s does not exist.") % {"id": funnel_id},
            fields={"funnel": _("No such funnel.")},
        )
    if not funnel.is_active:
        raise InvalidInput(
            _("The funnel “%(name)s” is archived.") % {"name": funnel.name},
            fields={"funnel": _("Choose an active funnel.")},
        )
    user = client.user
    if user is not None and not works_funnel(user, funnel):
        raise Forbidden(
            _("You do not work the funnel “%(name)s”.") % {"name": funnel.name},
            fields={"funnel": _("Choose one of your funnels.")},
        )
    return layout


_MEMBERS_TABLE = Funnel.members.through._meta.db_table
_USER_COLUMNS = tuple(field.name for field in User._meta.concrete_fields)


def _contact_keys(lead: LeadData) -> list[str]:
    """The keys that make two leads one client: normalised phone and email."""
    phone, email = normalize_phone(lead.contact_phone), normalize_email(lead.contact_email)
    return [key for key in (phone and f"phone:{phone}", email and f"email:{email}") if key]


def _lead_locks(leads: dict[int, list[LeadData]]) -> tuple[str, list] | None:
    """The statement that locks the leads (by funnel id) against concurrent twins, all
    at once and in a fixed order, so that two transactions never deadlock; None if
    there is nothing to lock.

    PostgreSQL advisory locks, one 64-bit number per key: the funnel's id (0 for a
    client's phone or email: clients are shared by all funnels) and a hash of the
    key. A collision only makes two unrelated requests wait for each other.
    """
    if connection.vendor != "postgresql":
        return None  # SQLite takes one writer at a time
    locks = set()
    for funnel_id, funnel_leads in leads.items():
        for lead in funnel_leads:
            if lead.external_id:
                locks.add((funnel_id << 32) | zlib.crc32(lead.external_id.encode()))
            locks.update(zlib.crc32(key.encode()) for key in _contact_keys(lead))
    if not locks:
        return None
    return (
        "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT k FROM "
        "unnest(string_to_array(%s, ',')::bigint[]) AS t(k) ORDER BY k) AS s",
        [",".join(map(str, sorted(locks)))],
    )


# The funnel's id as a query parameter that the planner cannot look up in its
# statistics: a funnel newer than them (the statistics are refreshed only after a
# tenth of the table has changed) would be planned as nearly empty, and its lookups
# would read all of its receipts or deals instead of the few rows they need.
_FUNNEL = "(SELECT %s)"


class _FunnelBatch:
    """One request's leads for one funnel (steps 3 and 4 of the module's docstring),
    in the same number of statements for one lead or a thousand."""

    def __init__(self, client: IntakeClient, layout: FunnelLayout, leads: dict[int, LeadData]):
        self.client = client
        self.layout = layout
        self.funnel = layout.funnel
        self.leads = leads
        self.at = timezone.now()

    def take(self, *, split_on_reject: bool = False) -> dict[int, dict | DomainError]:
        client, funnel = self.client, self.funnel
        try:
            opener = DealOpener(funnel, at=self.at, layout=self.layout)
        except DomainError as error:  # a funnel without stages takes no lead
            if split_on_reject:
                raise _SplitGroup from error
            return dict.fromkeys(self.leads, error)
        known = self._known_external_ids()
        open_deals = self._open_deals(opener.contacts)
        owners = User.objects.in_bulk({lead.owner_id for lead in self.leads.values()} - {None})

        # (outcome, deal, lead, replayed): new deals get their ids only when saved.
        outcomes: dict[int, tuple[str, Deal, LeadData, bool] | DomainError] = {}
        new: list[tuple[Deal, LeadData]] = []
        notes: list[tuple[Deal, str]] = []
        receipts: list[tuple[LeadData, Deal, str]] = []
        for index, lead in self.leads.items():
            ext = lead.external_id
            if ext and ext in known:
                outcomes[index] = (*known[ext], lead, True)
                continue
            keys = _contact_keys(lead)
            duplicate = _newest([open_deals[key] for key in keys if key in open_deals])
            if duplicate is not None:
                notes.append((duplicate, _lead_note(lead, client, repeated=True)))
                receipts.append((lead, duplicate, LeadOutcome.ATTACHED))
                outcomes[index] = (LeadOutcome.ATTACHED, duplicate, lead, False)
            else:
                try:
                    deal = opener.prepare(
                        actor=None,
                        title=_lead_title(lead),
                        owner=self._given_owner(lead, owners, opener),
                        values=_deal_values(lead),
                        external_id=ext,
                    )
                except DomainError as error:
                    if split_on_reject:
                        raise _SplitGroup from error
                    outcomes[index] = error
                    continue
                new.append((deal, lead))
                if lead.comment or lead.utm:
                    notes.append((deal, _lead_note(lead, client, repeated=False)))
                receipts.append((lead, deal, LeadOutcome.CREATED))
                outcomes[index] = (LeadOutcome.CREATED, deal, lead, False)
                if client.attach_duplicates:
                    open_deals.update(dict.fromkeys(keys, deal))
            if ext:
                known[ext] = outcomes[index][:2]

        with writes_together():  # the turn, the deals' rows, notes, receipts: one round trip
            opener.save(
                [deal for deal, _lead in new],
                before_deals=lambda: self._assign_turns(
                    [deal for deal, lead in new if lead.owner_id is None]
                ),
            )
            notes_add_system(notes=notes, at=self.at)
            insert_rows(
                LeadReceipt,
                ["funnel", "deal", "outcome", "external_id", "client", "payload", "received_at"],
                [
                    (
                        funnel.pk,
                        deal.pk,
                        outcome,
                        lead.external_id or None,
                        client.label,
                        lead.payload,
                        self.at,
                    )
                    for lead, deal, outcome in receipts
                ],
            )
        return {
            index: outcome
            if isinstance(outcome, DomainError)
            else _result(*outcome[:3], replayed=outcome[3])
            for index, outcome in outcomes.items()
        }

    def _known_external_ids(self) -> dict[str, tuple[str, Deal]]:
        """The first outcome of each external id already taken in the funnel: its lead
        receipt, or a deal opened by another door (the importer, the deals API)."""
        ids = sorted({lead.external_id for lead in self.leads.values() if lead.external_id})
        if not ids:
            return {}
        marks = placeholders(len(ids))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT r.external_id, r.outcome, r.deal_id, d.owner_id, 0 AS door "
                f"FROM {LeadReceipt._meta.db_table} r "
                f"LEFT JOIN {Deal._meta.db_table} d ON d.id = r.deal_id "
                f"WHERE r.funnel_id = {_FUNNEL} AND r.external_id IN ({marks}) "
                "UNION ALL "
                "SELECT d.external_id, %s, d.id, d.owner_id, 1 AS door "
                f"FROM {Deal._meta.db_table} d "
                f"WHERE d.funnel_id = {_FUNNEL} AND d.external_id IN ({marks})",
                [self.funnel.pk, *ids, str(LeadOutcome.CREATED), self.funnel.pk, *ids],
            )
            rows = cursor.fetchall()
        known: dict[str, tuple[str, Deal]] = {}
        for external_id, outcome, deal_id, owner_id, _door in sorted(rows, key=lambda row: row[4]):
            known.setdefault(external_id, (outcome, Deal(pk=deal_id, owner_id=owner_id)))
        return known

    def _open_deals(self, contacts: ContactBook) -> dict[str, Deal]:
        """The newest open (or postponed) deal of the funnel per phone and email key."""
        details = [(lead.contact_phone, lead.contact_email) for lead in self.leads.values()]
        clients = contacts.preload(details)
        if not (self.client.attach_duplicates and clients):
            return {}
        keys_of = {
            contact.pk: [
                key
                for key in (
                    contact.phone_normalized and f"phone:{contact.phone_normalized}",
                    contact.email_normalized and f"email:{contact.email_normalized}",
                )
                if key
            ]
            for contact in clients
        }
        open_deals: dict[str, Deal] = {}
        contact_ids = sorted(keys_of)
        found = fetch_objects(
            Deal,
            _OPEN_DEAL_COLUMNS,
            f"SELECT {select_list(Deal, _OPEN_DEAL_COLUMNS, 'd')} FROM {Deal._meta.db_table} d "
            f"WHERE d.funnel_id = {_FUNNEL} AND d.status IN (%s, %s) "
            f"AND d.contact_id IN ({placeholders(len(contact_ids))}) "
            "ORDER BY d.created_at DESC, d.id DESC",
            [self.funnel.pk, DealStatus.OPEN, DealStatus.POSTPONED, *contact_ids],
        )
        for deal in found:
            for key in keys_of[deal.contact_id]:
                open_deals.setdefault(key, deal)
        return open_deals

    def _given_owner(
        self, lead: LeadData, owners: dict[int, User], opener: DealOpener
    ) -> User | None:
        """The lead's own owner, if it names one: an active member of the funnel."""
        if lead.owner_id is None:
            return None
        owner = owners.get(lead.owner_id)
        if owner is None or not owner.is_active:
            raise InvalidInput(
                _("User %(id)s is not an active user.") % {"id": lead.owner_id},
                fields={"owner_id": _("Choose an active user.")},
            )
        owner_check(owner, self.funnel, opener.member_ids)
        return owner

    def _assign_turns(self, deals: list[Deal]) -> None:
        """Give each deal the next active, present manager after the last one assigned
        (by id, wrapping).

        On PostgreSQL, when the intake's transaction is its own (not inside a
        caller's), the turns are taken in a short transaction of their own
        (``_TurnTaker``): batches and groups of one funnel would otherwise queue on
        its turn row from their deals' insert to their commit. A transaction that
        then fails has used up its turns (the next lead goes to the manager after
        them). Elsewhere (SQLite, or inside a caller's transaction) the row is
        locked here, once the clients are written, and held until commit.
        """
        if not deals:
            return
        funnel_id = self.funnel.pk
        if _turns_apart.get():
            rotation = _rotation(funnel_id)
            if rotation:
                _turn_taker.take(funnel_id, lambda last: _hand_out(deals, rotation, last))
            return
        last, rotation = _lock_intake_state(funnel_id)
        if rotation:
            write_later(_TURN_STORE, [_hand_out(deals, rotation, last), funnel_id])


def _hand_out(deals: list[Deal], rotation: list[User], last: int) -> int:
    """Give the deals their owners in turn after the manager ``last``; return the last
    one given."""
    for deal in deals:
        owner = next((user for user in rotation if user.pk > last), rotation[0])
        deal.owner = owner
        last = owner.pk
    return last


_STATE_TABLE = FunnelIntakeState._meta.db_table
# The funnel's turn row, created on first use and locked (an upsert locks the row it
# touches, on both databases); then the last manager assigned, stored.
_TURN_LOCK = (
    f"INSERT INTO {_STATE_TABLE} (funnel_id) VALUES (%s) "
    "ON CONFLICT (funnel_id) DO UPDATE SET funnel_id = EXCLUDED.funnel_id"
)
_TURN_STORE = f"UPDATE {_STATE_TABLE} SET last_assigned_id = %s WHERE funnel_id = %s"

_ROTATION_SQL = (
    f"SELECT {select_list(User, _USER_COLUMNS, 'u')} FROM {User._meta.db_table} u "
    f"JOIN {_MEMBERS_TABLE} m ON m.user_id = u.id "
    "WHERE m.funnel_id = %s AND u.is_active AND u.role = %s AND NOT u.is_away ORDER BY u.id"
)


def _rotation(funnel_id: int) -> list[User]:
    """The managers in turn, by id: the funnel's active members with the manager role
    who are not away."""
    return fetch_objects(User, _USER_COLUMNS, _ROTATION_SQL, [funnel_id, Role.MANAGER])


class _TurnTaker:
    """Round-robin turns taken in short transactions of their own, on one PostgreSQL
    connection per process that its threads share (one at a time): the funnel's turn
    row is locked for two statements, not until the intake commits. The connection
    is kept as long as the process when the database connections are persistent
    (``CONN_MAX_AGE``), else opened for each use."""

    def __init__(self):
        self._lock = threading.Lock()
        self._connection = None
        self._pid = None

    def take(self, funnel_id: int, hand_out) -> None:
        """Lock the funnel's turn row, call ``hand_out(last assigned id or 0)``, store
        the id it returns, and commit."""
        with self._lock:
            side = self._open()
            try:
                with side.transaction(), side.cursor() as cursor:
                    cursor.execute(f"{_TURN_LOCK} RETURNING last_assigned_id", [funnel_id])
                    (last,) = cursor.fetchone()
                    cursor.execute(_TURN_STORE, [hand_out(last or 0), funnel_id])
            except Exception:
                self._close()  # a broken connection is opened anew next time
                raise
            if connection.settings_dict["CONN_MAX_AGE"] == 0:
                self._close()  # kept only where the database connections are kept

    def _open(self):
        if self._connection is None or self._pid != os.getpid() or self._connection.closed:
            params = connection.get_connection_params()
            side = connection.Database.connect(**params)
            # A lost turn is harmless: no need to wait for the disk. And never wait on
            # the turn row for long: something would be wrong (a caller's transaction
            # holding it), and the intake's own locks wait with it.
            side.execute("SET synchronous_commit = off")
            side.execute("SET lock_timeout = '5s'")
            side.commit()
            self._connection, self._pid = side, os.getpid()
        return self._connection

    def _close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None


_turn_taker = _TurnTaker()


# What the duplicate check needs of an open deal: its id, owner and age.
_OPEN_DEAL_COLUMNS = ("id", "owner", "contact", "created_at")


def _newest(deals: list[Deal]) -> Deal | None:
    """The newest deal (by creation, then id; one not saved yet is the newest)."""
    if not deals:
        return None
    return max(deals, key=lambda deal: (deal.created_at, deal.pk or float("inf")))


_STATE_COLUMNS = ("funnel", "last_assigned")


def _lock_intake_state(funnel_id: int) -> tuple[int, list[User]]:
    """Lock the funnel's intake row (created on first use) until commit; return the id
    of the last manager assigned (0 for none) and the managers in turn, by id: the
    funnel's active members with the manager role who are not away.

    On PostgreSQL the lock goes in the same round trip as the read, which runs after
    it: it sees the row and the members as they are once the lock is held.
    """
    with sent_with_next(_TURN_LOCK, [funnel_id]):
        rows = fetch_joined(
            [(FunnelIntakeState, _STATE_COLUMNS), (User, _USER_COLUMNS)],
            f"SELECT {select_list(FunnelIntakeState, _STATE_COLUMNS, 'state')}, "
            f"{select_list(User, _USER_COLUMNS, 'u')} FROM {_STATE_TABLE} state "
            f"LEFT JOIN ({_ROTATION_SQL}) u ON TRUE WHERE state.funnel_id = %s ORDER BY u.id",
            [funnel_id, Role.MANAGER, funnel_id],
        )
    (state, _user), *_rest = rows
    return state.last_assigned_id or 0, [user for _state, user in rows if user is not None]


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
