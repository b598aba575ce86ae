"""Import deals and their stage history from CSV files (``manage.py import_deals``).

``deals_import`` reads every row of both files and checks it before it writes
anything. If any row is wrong it raises ``ImportRejected`` naming each bad row
by file and line, and nothing is written. Otherwise one transaction creates the
funnel (when stages are given and it does not exist), the missing owners (when
asked), the missing loss reasons and the clients, and loads the deals with
their history through ``deals.bulk.deals_bulk_load``, which writes the rows
the service functions would have written.

Deals are keyed by (funnel, external_id): rows already imported are skipped,
never updated, so running the same import twice changes nothing.

Everything is resolved in memory against reference data loaded once (stages,
users, loss reasons, existing external ids, clients looked up in chunks), so
the number of queries does not grow with the number of rows. The file format
and every decision about ambiguous data are described in docs/import.md.
"""

import csv
import dataclasses
import datetime
import re
from collections import defaultdict
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db import connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import Role, User
from crm.db import insert_rows_with_ids
from crm.errors import InvalidInput
from deals.bulk import DealPlan, deals_bulk_load
from deals.models import Contact, Deal, DealStatus, Temperature

# The service's own rule for an email address, so that the import accepts the
# same clients as the board does.
from deals.services import EMAIL_RE, normalize_email, normalize_phone
from funnels.models import DEFAULT_LOSS_REASONS, OTHER_LOSS_REASON, Funnel, LossReason
from funnels.services import funnel_create, loss_reason_add

DEAL_COLUMNS = (
    "external_id",
    "title",
    "owner",
    "created_at",
    "status",
    "stage",
    "amount",
    "source",
    "product",
    "region",
    "temperature",
    "client",
    "loss_reason",
    "loss_comment",
    "closed_at",
    "next_contact_at",
)
DEAL_REQUIRED_COLUMNS = ("external_id", "created_at")
CONTACT_COLUMNS = (
    "name",
    "phone",
    "email",
    "company",
    "phone_normalized",
    "email_normalized",
    "created_at",
)
EVENT_COLUMNS = ("external_id", "at", "stage")
EVENT_REQUIRED_COLUMNS = EVENT_COLUMNS

# Status words as old CRMs and spreadsheets spell them (compared case-insensitively).
STATUS_WORDS = {
    DealStatus.OPEN: ("open", "открыта", "открыт", "в работе"),
    DealStatus.POSTPONED: ("postponed", "отложена", "отложен"),
    DealStatus.WON: ("won", "выиграна", "выигран", "успешно", "успешно реализовано"),
    DealStatus.LOST: ("lost", "проиграна", "проигран", "отказ", "закрыто и не реализовано"),
}
TEMPERATURE_WORDS = {
    Temperature.WARM: ("warm", "тёплый", "теплый", "тёплая", "теплая"),
    Temperature.COLD: ("cold", "холодный", "холодная"),
}
IMPORTED_WITHOUT_REASON = "Imported without a reason"
IMPORTED_WITHOUT_COMMENT = "Imported without a comment"
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}
ERRORS_SHOWN = 50
# Lookups of existing clients go in chunks within the backend's parameter limit.
LOOKUP_CHUNK = 5000
MAX_AMOUNT = Decimal("1e12")
DATE_FORMATS_HINT = "YYYY-MM-DD [HH:MM[:SS]] or DD.MM.YYYY [HH:MM[:SS]]"

_STATUSES = {word: status for status, words in STATUS_WORDS.items() for word in words}
_TEMPERATURES = {word: value for value, words in TEMPERATURE_WORDS.items() for word in words}
_DOTTED_DATE = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_NAMED_CLIENT = re.compile(r"^(?P<name>[^<>]*?)\s*<(?P<detail>[^<>]*)>$")
_PHONE_LIKE = re.compile(r"^\+?[\d\s().\-]+$")
_USERNAME_UNSAFE = re.compile(r"[^\w.@+-]+")
_SPACES = re.compile(r"[\s\u00a0\u202f']+")


# ---------------------------------------------------------------- results and errors


@dataclasses.dataclass(frozen=True)
class Problem:
    """What is wrong, and where: a file and line, or the command itself."""

    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.file and self.line:
            return f"{self.file}, line {self.line}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message


class ImportRejected(InvalidInput):
    """The files have errors; nothing was written. ``problems`` lists every one."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(
            _("The import was refused and nothing was written: %(count)d errors to fix.")
            % {"count": len(problems)}
        )

    def report(self, limit: int = ERRORS_SHOWN) -> str:
        """The message and the first ``limit`` problems, one a line."""
        lines = [self.message, *(str(problem) for problem in self.problems[:limit])]
        if len(self.problems) > limit:
            lines.append(_("… and %(count)d more errors.") % {"count": len(self.problems) - limit})
        return "\n".join(lines)


@dataclasses.dataclass
class ImportResult:
    funnel: Funnel
    funnel_created: bool
    created: int
    already_imported: int
    owners_created: list[str]
    loss_reasons_added: list[str]
    contacts_created: int


# ---------------------------------------------------------------- reading files


@dataclasses.dataclass
class _Table:
    name: str
    rows: list[tuple[int, dict[str, str]]]


def _column_name(raw: str) -> str:
    return re.sub(r"[\s\-]+", "_", raw.strip().lower())


def _read_csv(
    path: str | Path,
    *,
    delimiter: str,
    columns: tuple[str, ...],
    required: tuple[str, ...],
    problems: list[Problem],
) -> _Table:
    """The data rows of a CSV file with their line numbers (the header is line 1).

    Header errors are added to ``problems`` and leave the table empty: rows
    cannot be read against a wrong header.
    """
    name = Path(path).name
    table = _Table(name=name, rows=[])
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                problems.append(Problem(_("The file is empty: it needs a header row first."), name))
                return table
            header = [_column_name(cell) for cell in header]
            header_problems = _header_problems(header, columns, required, delimiter)
            if header_problems:
                problems.extend(Problem(text, name, 1) for text in header_problems)
                return table
            width = len(header)
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) > width and any(cell.strip() for cell in cells[width:]):
                    problems.append(
                        Problem(
                            _(
                                "The row has %(values)d values but the header has %(columns)d "
                                "columns: check the delimiter and quote values that contain it."
                            )
                            % {"values": len(cells), "columns": width},
                            name,
                            line,
                        )
                    )
                    continue
                cells = [cell.strip() for cell in cells[:width]]
                cells += [""] * (width - len(cells))
                table.rows.append((line, dict(zip(header, cells, strict=True))))
    except FileNotFoundError:
        problems.append(Problem(_("The file does not exist."), str(path)))
    except UnicodeDecodeError:
        problems.append(
            Problem(_("The file is not UTF-8 text: save it as “CSV UTF-8” and try again."), name)
        )
    except (OSError, csv.Error) as exc:
        problems.append(Problem(_("The file cannot be read: %(error)s.") % {"error": exc}, name))
    return table


def _header_problems(
    header: list[str], columns: tuple[str, ...], required: tuple[str, ...], delimiter: str
) -> list[str]:
    found: list[str] = []
    if len(header) == 1 and delimiter != ";" and ";" in header[0]:
        return [_("The header has one column with “;” in it: run with --delimiter ';'.")]
    unknown = [name for name in header if name not in columns]
    if unknown:
        found.append(
            _("Unknown columns: %(unknown)s. The columns are: %(columns)s.")
            % {"unknown": ", ".join(unknown), "columns": ", ".join(columns)}
        )
    doubled = sorted({name for name in header if name and header.count(name) > 1})
    if doubled:
        found.append(_("These columns appear twice: %(names)s.") % {"names": ", ".join(doubled)})
    missing = [name for name in required if name not in header]
    if missing:
        found.append(_("Required columns are missing: %(names)s.") % {"names": ", ".join(missing)})
    return found


# ---------------------------------------------------------------- parsing values


class _Bad(Exception):
    """A value that cannot be imported; the message says what to fix.

    ``file`` and ``line`` point elsewhere than the row being checked.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.file, self.line = file, line


def _moment(raw: str, column: str, zone: datetime.tzinfo) -> datetime.datetime | None:
    """ISO 8601 or DD.MM.YYYY, with an optional time; naive ones in ``zone``."""
    if not raw:
        return None
    try:
        value = datetime.datetime.fromisoformat(raw)
    except ValueError:
        match = _DOTTED_DATE.match(raw)
        try:
            if match is None:
                raise ValueError(raw)
            day, month, year, hour, minute, second = match.groups()
            value = datetime.datetime(
                int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
            )
        except ValueError:
            raise _Bad(
                _("%(column)s “%(value)s” is not a date: write it as %(formats)s.")
                % {"column": column, "value": raw, "formats": DATE_FORMATS_HINT}
            ) from None
    if timezone.is_naive(value):
        value = timezone.make_aware(value, zone)
    return value


def _amount(raw: str) -> Decimal | None:
    """``1 234,50``, ``1234.5`` or ``1,234.50``: the last comma or dot is the decimal mark."""
    if not raw:
        return None
    text = _SPACES.sub("", raw)
    if "," in text and "." in text:
        if text.rfind(",") > text.rfind("."):
            text = text.replace(".", "").replace(",", ".")
        else:
            text = text.replace(",", "")
    else:
        text = text.replace(",", ".")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise _Bad(_("amount “%(value)s” is not a number.") % {"value": raw}) from None
    if not amount.is_finite() or amount < 0 or amount >= MAX_AMOUNT:
        raise _Bad(
            _("amount “%(value)s” is out of range: give a number from 0 to 999 999 999 999.")
            % {"value": raw}
        )
    return amount.quantize(Decimal("0.01"))


def _text(raw: str, column: str, max_length: int) -> str:
    if len(raw) > max_length:
        raise _Bad(
            _("%(column)s is longer than %(max)d characters.")
            % {"column": column, "max": max_length}
        )
    return raw


def _folded(text: str) -> str:
    """The form names are compared in: case and runs of spaces do not matter."""
    return " ".join(text.split()).casefold()


@dataclasses.dataclass(frozen=True)
class _Client:
    """A client as the file gives it. ``key`` identifies him: phone, else email, else name."""

    name: str
    phone: str
    email: str
    key: tuple[str, str]


def _client(raw: str) -> _Client | None:
    """``Name``, ``Name <email>``, ``Name <phone>``, an email or a phone."""
    raw = " ".join(raw.split())
    if not raw:
        return None
    match = _NAMED_CLIENT.match(raw)
    name, detail = (match["name"].strip(), match["detail"].strip()) if match else ("", raw)
    if match and not detail:
        raise _Bad(_("client “%(value)s”: put an email or a phone inside <…>.") % {"value": raw})
    if "@" in detail:
        if not EMAIL_RE.match(detail) or len(detail) > 254:
            raise _Bad(
                _("client “%(value)s”: “%(email)s” is not an email address.")
                % {
                    "value": raw,
                    "email": detail,
                }
            )
        client = _Client(name, "", detail, ("email", normalize_email(detail)))
    elif _PHONE_LIKE.match(detail) and sum(char.isdigit() for char in detail) >= 5:
        phone = normalize_phone(detail)
        if not 7 <= len(phone) <= 15 or len(detail) > 40:
            raise _Bad(
                _("client “%(value)s”: “%(phone)s” is not a phone number.")
                % {
                    "value": raw,
                    "phone": detail,
                }
            )
        client = _Client(name, detail, "", ("phone", phone))
    elif match:
        raise _Bad(
            _("client “%(value)s”: “%(detail)s” inside <…> is neither an email nor a phone.")
            % {"value": raw, "detail": detail}
        )
    else:
        client = _Client(raw, "", "", ("name", _folded(raw)))
    if len(client.name) > 200:
        raise _Bad(_("client name is longer than 200 characters."))
    return client


# ---------------------------------------------------------------- reference data


class _Stages:
    """The funnel's stages by name, as positions 0..n-1 (ids are known only after writing)."""

    def __init__(self, names: list[str], funnel_name: str) -> None:
        self.names = names
        self.funnel_name = funnel_name
        self.positions: dict[str, int] = {}
        for position, name in enumerate(names):
            self.positions.setdefault(_folded(name), position)

    def position(self, raw: str, column: str) -> int:
        position = self.positions.get(_folded(raw))
        if position is None:
            raise _Bad(
                _(
                    "%(column)s “%(value)s” is not a stage of the funnel “%(funnel)s”: "
                    "use one of %(stages)s."
                )
                % {
                    "column": column,
                    "value": raw,
                    "funnel": self.funnel_name,
                    "stages": ", ".join(self.names),
                }
            )
        return position


@dataclasses.dataclass
class _NewOwner:
    username: str
    first_name: str
    last_name: str
    shown_as: str


class _Owners:
    """Users by username (exact, then case-insensitive) or by full name; new ones on demand."""

    def __init__(self, *, create: bool) -> None:
        self.create = create
        self.by_username: dict[str, User] = {}
        self.by_folded_username: dict[str, list[User]] = defaultdict(list)
        self.by_full_name: dict[str, list[User]] = defaultdict(list)
        for user in User.objects.only(
            "id", "username", "first_name", "last_name", "is_active"
        ).order_by("id"):
            self.by_username[user.username] = user
            self.by_folded_username[user.username.casefold()].append(user)
            full_name = _folded(f"{user.first_name} {user.last_name}")
            if full_name:
                self.by_full_name[full_name].append(user)
        self.taken_usernames = set(self.by_folded_username)
        self.new: dict[str, _NewOwner] = {}

    def resolve(self, raw: str) -> tuple[int | None, str | None]:
        """(user id, None) for a known user, (None, key of a new owner), or (None, None)."""
        if not raw:
            return None, None
        user = self.by_username.get(raw)
        if user is None:
            candidates = self.by_folded_username.get(raw.casefold()) or self.by_full_name.get(
                _folded(raw), []
            )
            if len(candidates) > 1:
                raise _Bad(
                    _("owner “%(value)s” matches several users (%(users)s): give the username.")
                    % {"value": raw, "users": ", ".join(u.username for u in candidates)}
                )
            user = candidates[0] if candidates else None
        if user is not None:
            if not user.is_active:
                raise _Bad(
                    _("owner “%(value)s” is deactivated and cannot own deals: choose another.")
                    % {"value": raw}
                )
            return user.pk, None
        if not self.create:
            raise _Bad(
                _(
                    "owner “%(value)s” is not a user: give a username or “First Last”, "
                    "create the user, or run with --create-owners."
                )
                % {"value": raw}
            )
        key = _folded(raw)
        if key not in self.new:
            self.new[key] = self._plan_new(raw)
        return None, key

    def _plan_new(self, raw: str) -> _NewOwner:
        words = raw.split()
        if len(words) > 1:
            first_name, last_name = words[0], " ".join(words[1:])
            base = ".".join(words).lower()
        else:
            first_name, last_name, base = "", "", raw
        base = _USERNAME_UNSAFE.sub(".", base).strip(".")[:140] or "manager"
        username, number = base, 1
        while username.casefold() in self.taken_usernames:
            number += 1
            username = f"{base}{number}"
        self.taken_usernames.add(username.casefold())
        return _NewOwner(username, first_name[:150], last_name[:150], raw)


class _Reasons:
    """Loss reasons by name: the funnel's (or those a new funnel will get), and new ones."""

    def __init__(self, funnel: Funnel | None) -> None:
        if funnel is None:
            known = [(str(name), False) for name in DEFAULT_LOSS_REASONS]
            known.append((str(OTHER_LOSS_REASON), True))
        else:
            known = list(
                LossReason.objects.filter(funnel=funnel)
                .order_by("position", "id")
                .values_list("name", "requires_comment")
            )
        self.names: dict[str, str] = {}
        self.requires_comment: dict[str, bool] = {}
        for name, requires_comment in known:
            key = _folded(name)
            self.names.setdefault(key, name)
            self.requires_comment.setdefault(key, requires_comment)

    def key(self, raw: str) -> str:
        """The reason's key; an unknown name is remembered, to be added when writing."""
        key = _folded(raw)
        self.names.setdefault(key, " ".join(raw.split()))
        return key

    def needs_comment(self, key: str) -> bool:
        return self.requires_comment.get(key, False)

    def other_key(self) -> str:
        """The “Other” reason; if the funnel lacks it, it is added needing a comment."""
        key = _folded(str(OTHER_LOSS_REASON))
        if key not in self.names:
            self.names[key] = str(OTHER_LOSS_REASON)
            self.requires_comment[key] = True
        return key


# ---------------------------------------------------------------- checking rows


@dataclasses.dataclass
class _Event:
    line: int
    at: datetime.datetime
    position: int


@dataclasses.dataclass
class _Deal:
    line: int
    external_id: str
    title: str
    created_at: datetime.datetime
    status: str
    path: list[tuple[int, datetime.datetime]]  # (stage position, entered at)
    closed_at: datetime.datetime | None = None
    next_contact_at: datetime.datetime | None = None
    owner_id: int | None = None
    new_owner: str | None = None
    reason: str | None = None
    loss_comment: str = ""
    client: _Client | None = None
    amount: Decimal | None = None
    source: str = ""
    product: str = ""
    region: str = ""
    temperature: str = ""


class _Checker:
    def __init__(
        self,
        *,
        stages: _Stages,
        owners: _Owners,
        reasons: _Reasons,
        strict: bool,
        deals_file: str,
        events_file: str,
    ) -> None:
        self.stages, self.owners, self.reasons = stages, owners, reasons
        self.strict = strict
        self.deals_file, self.events_file = deals_file, events_file
        self.zone = timezone.get_current_timezone()
        self.now = timezone.now()
        self.problems: list[Problem] = []

    def _not_future(self, value: datetime.datetime | None, column: str) -> None:
        if value is not None and value > self.now:
            raise _Bad(
                _("%(column)s %(value)s is in the future.")
                % {"column": column, "value": _shown(value)}
            )

    def events(self, table: _Table) -> dict[str, list[_Event]]:
        """Each deal's events in time order (ties keep the file's order)."""
        by_deal: dict[str, list[_Event]] = defaultdict(list)
        for line, row in table.rows:
            try:
                external_id = row["external_id"]
                if not external_id:
                    raise _Bad(_("external_id is empty: give the deal's external_id."))
                at = _moment(row["at"], "at", self.zone)
                if at is None:
                    raise _Bad(_("at is empty: give the time the deal entered the stage."))
                self._not_future(at, "at")
                if not row["stage"]:
                    raise _Bad(_("stage is empty: give the stage the deal entered."))
                position = self.stages.position(row["stage"], "stage")
            except _Bad as exc:
                self.problems.append(Problem(str(exc), table.name, line))
                continue
            by_deal[external_id].append(_Event(line, at, position))
        for items in by_deal.values():
            items.sort(key=lambda event: event.at)
        return by_deal

    def deals(self, table: _Table, events: dict[str, list[_Event]]) -> list[_Deal]:
        checked: list[_Deal] = []
        seen: dict[str, int] = {}
        for line, row in table.rows:
            external_id = row["external_id"]
            if external_id in seen:
                self.problems.append(
                    Problem(
                        _(
                            "external_id “%(value)s” is already on line %(line)d: "
                            "each deal appears once."
                        )
                        % {"value": external_id, "line": seen[external_id]},
                        table.name,
                        line,
                    )
                )
                continue
            if external_id:
                seen[external_id] = line
            try:
                checked.append(self._deal(line, row, events.get(external_id, [])))
            except _Bad as exc:
                self.problems.append(Problem(str(exc), exc.file or table.name, exc.line or line))
        for external_id, items in events.items():
            if external_id not in seen:
                for event in items:
                    self.problems.append(
                        Problem(
                            _(
                                "external_id “%(value)s” is not in %(deals)s: add the deal "
                                "there or remove its events."
                            )
                            % {"value": external_id, "deals": self.deals_file},
                            self.events_file,
                            event.line,
                        )
                    )
        self.problems.sort(key=lambda p: (p.file != self.deals_file, p.file or "", p.line or 0))
        return checked

    def _deal(self, line: int, row: dict[str, str], events: list[_Event]) -> _Deal:
        get = row.get
        external_id = _text(row["external_id"], "external_id", 120)
        if not external_id:
            raise _Bad(_("external_id is empty: give every deal its id from the old system."))
        created_at = _moment(row["created_at"], "created_at", self.zone)
        if created_at is None:
            raise _Bad(
                _("created_at is empty: give the date the deal was created (%(formats)s).")
                % {"formats": DATE_FORMATS_HINT}
            )
        self._not_future(created_at, "created_at")
        raw_status = get("status", "")
        status = _STATUSES.get(_folded(raw_status)) if raw_status else DealStatus.OPEN
        if status is None:
            raise _Bad(
                _("status “%(value)s” is unknown: use open, postponed, won or lost.")
                % {"value": raw_status}
            )
        deal = _Deal(
            line=line,
            external_id=external_id,
            title=_text(get("title", ""), "title", 255)
            or _("Deal %(external_id)s") % {"external_id": external_id},
            created_at=created_at,
            status=status,
            path=self._path(line, created_at, get("stage", ""), events),
            amount=_amount(get("amount", "")),
            source=_text(get("source", ""), "source", 100),
            product=_text(get("product", ""), "product", 100),
            region=_text(get("region", ""), "region", 100),
            client=_client(get("client", "")),
        )
        raw_temperature = get("temperature", "")
        if raw_temperature:
            deal.temperature = _TEMPERATURES.get(_folded(raw_temperature), "")
            if not deal.temperature:
                raise _Bad(
                    _("temperature “%(value)s” is unknown: use warm or cold.")
                    % {"value": raw_temperature}
                )
        deal.owner_id, deal.new_owner = self.owners.resolve(get("owner", ""))
        last_event_at = events[-1].at if events else created_at
        closed_at = _moment(get("closed_at", ""), "closed_at", self.zone)
        next_contact_at = _moment(get("next_contact_at", ""), "next_contact_at", self.zone)
        raw_reason = " ".join(get("loss_reason", "").split())
        comment = get("loss_comment", "")
        if status in (DealStatus.WON, DealStatus.LOST):
            self._not_future(closed_at, "closed_at")
            if closed_at is not None and closed_at < created_at:
                raise _Bad(
                    _("closed_at %(closed)s is before created_at %(created)s.")
                    % {"closed": _shown(closed_at), "created": _shown(created_at)}
                )
            if closed_at is not None and closed_at < last_event_at:
                raise _Bad(
                    _(
                        "closed_at %(closed)s is before the deal's last event at %(event)s "
                        "(%(events)s, line %(line)d)."
                    )
                    % {
                        "closed": _shown(closed_at),
                        "event": _shown(last_event_at),
                        "events": self.events_file,
                        "line": events[-1].line,
                    }
                )
            deal.closed_at = closed_at or last_event_at
        elif closed_at is not None:
            raise _Bad(
                _("closed_at is given but the deal is %(status)s: clear it or fix the status.")
                % {"status": status}
            )
        if status == DealStatus.POSTPONED:
            if next_contact_at is None:
                raise _Bad(
                    _("A postponed deal needs next_contact_at: the date to contact the client.")
                )
            if next_contact_at <= deal.path[-1][1]:
                raise _Bad(
                    _(
                        "next_contact_at %(next)s must be later than %(since)s, "
                        "when the deal was postponed."
                    )
                    % {"next": _shown(next_contact_at), "since": _shown(deal.path[-1][1])}
                )
            deal.next_contact_at = next_contact_at
        elif next_contact_at is not None:
            raise _Bad(
                _("next_contact_at is only for postponed deals: clear it or fix the status.")
            )
        if status == DealStatus.LOST:
            self._loss(deal, raw_reason, comment)
        elif raw_reason or comment:
            raise _Bad(
                _(
                    "loss_reason and loss_comment are only for lost deals: "
                    "clear them or fix the status."
                )
            )
        return deal

    def _path(
        self, line: int, created_at: datetime.datetime, raw_stage: str, events: list[_Event]
    ) -> list[tuple[int, datetime.datetime]]:
        """Where the deal went. It enters the first event's stage at created_at."""
        stage = self.stages.position(raw_stage, "stage") if raw_stage else None
        if not events:
            return [(0 if stage is None else stage, created_at)]
        if events[0].at < created_at:
            raise _Bad(
                _(
                    "at %(at)s is before the deal's created_at %(created)s "
                    "(%(deals)s, line %(line)d)."
                )
                % {
                    "at": _shown(events[0].at),
                    "created": _shown(created_at),
                    "deals": self.deals_file,
                    "line": line,
                },
                file=self.events_file,
                line=events[0].line,
            )
        path = [(events[0].position, created_at)]
        for event in events[1:]:
            if event.position != path[-1][0]:
                path.append((event.position, event.at))
        if stage is not None and stage != path[-1][0]:
            raise _Bad(
                _(
                    "stage is “%(stage)s” but the deal's last event (%(events)s, line %(line)d) "
                    "puts it in “%(last)s”: make them agree or leave stage empty."
                )
                % {
                    "stage": self.stages.names[stage],
                    "events": self.events_file,
                    "line": events[-1].line,
                    "last": self.stages.names[path[-1][0]],
                }
            )
        return path

    def _loss(self, deal: _Deal, raw_reason: str, comment: str) -> None:
        if raw_reason:
            deal.reason = self.reasons.key(raw_reason)
        elif self.strict:
            raise _Bad(
                _(
                    "A lost deal needs a loss_reason: fill it in, or run with --no-strict to "
                    "import it with the reason “%(other)s”."
                )
                % {"other": OTHER_LOSS_REASON}
            )
        else:
            deal.reason = self.reasons.other_key()
            comment = comment or IMPORTED_WITHOUT_REASON
        if not comment and self.reasons.needs_comment(deal.reason):
            if self.strict:
                raise _Bad(
                    _(
                        "The reason “%(reason)s” needs a comment: fill in loss_comment, or run "
                        "with --no-strict."
                    )
                    % {"reason": self.reasons.names.get(deal.reason, raw_reason)}
                )
            comment = IMPORTED_WITHOUT_COMMENT
        deal.loss_comment = comment


def _shown(value: datetime.datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------- the import


def _parse_stage_names(stages: str | list[str] | None) -> list[str] | None:
    if stages is None:
        return None
    names = stages.split(";") if isinstance(stages, str) else list(stages)
    return [" ".join(name.split()) for name in names]


def _stage_list_problems(names: list[str]) -> list[Problem]:
    if not names or any(not name for name in names):
        return [Problem(_("--stages needs stage names separated by “;”, none of them empty."))]
    folded = [_folded(name) for name in names]
    doubled = sorted({name for name in names if folded.count(_folded(name)) > 1})
    if doubled:
        return [
            Problem(_("--stages names a stage twice: %(names)s.") % {"names": ", ".join(doubled)})
        ]
    return []


def deals_import(
    *,
    funnel_name: str,
    deals_path: str | Path,
    events_path: str | Path | None = None,
    stages: str | list[str] | None = None,
    create_owners: bool = False,
    strict: bool = True,
    delimiter: str = ",",
) -> ImportResult:
    """Check every row of the files, then write the new deals in one transaction.

    ``stages`` (names, or one string separated by ``;``) creates the funnel if it
    does not exist; ``delimiter`` is one character, or ``tab``. Raises
    ``ImportRejected`` listing every bad row, with nothing written. An existing
    funnel's row is locked, so two imports into it run one after the other.
    """
    problems: list[Problem] = []
    delimiter = DELIMITER_NAMES.get(delimiter.lower(), delimiter)
    if len(delimiter) != 1:
        raise ImportRejected([Problem(_("The delimiter is one character: “,”, “;” or “tab”."))])
    stage_names = _parse_stage_names(stages)
    if stage_names is not None:
        problems.extend(_stage_list_problems(stage_names))
    deals_table = _read_csv(
        deals_path,
        delimiter=delimiter,
        columns=DEAL_COLUMNS,
        required=DEAL_REQUIRED_COLUMNS,
        problems=problems,
    )
    events_table = (
        _read_csv(
            events_path,
            delimiter=delimiter,
            columns=EVENT_COLUMNS,
            required=EVENT_REQUIRED_COLUMNS,
            problems=problems,
        )
        if events_path
        else _Table(name="", rows=[])
    )
    if problems:
        raise ImportRejected(problems)

    with transaction.atomic():
        funnel = Funnel.objects.select_for_update().filter(name=funnel_name.strip()).first()
        stage_list = _funnel_stages(funnel, funnel_name, stage_names)
        checker = _Checker(
            stages=_Stages(stage_list, funnel_name.strip()),
            owners=_Owners(create=create_owners),
            reasons=_Reasons(funnel),
            strict=strict,
            deals_file=deals_table.name,
            events_file=events_table.name,
        )
        checked = checker.deals(deals_table, checker.events(events_table))
        if checker.problems:
            raise ImportRejected(checker.problems)
        return _write(funnel, funnel_name.strip(), stage_list, checked, checker)


def _funnel_stages(funnel: Funnel | None, name: str, stage_names: list[str] | None) -> list[str]:
    if funnel is None:
        if stage_names is None:
            raise ImportRejected(
                [
                    Problem(
                        _(
                            "The funnel “%(name)s” does not exist: check the name, or give "
                            '--stages "First;Second;…" to create it.'
                        )
                        % {"name": name}
                    )
                ]
            )
        return stage_names
    if not funnel.is_active:
        raise ImportRejected(
            [Problem(_("The funnel “%(name)s” is archived.") % {"name": funnel.name})]
        )
    existing = list(funnel.stages.order_by("position").values_list("name", flat=True))
    if stage_names is not None and [_folded(n) for n in stage_names] != [
        _folded(n) for n in existing
    ]:
        raise ImportRejected(
            [
                Problem(
                    _(
                        "The funnel “%(name)s” already exists with the stages %(existing)s; "
                        "--stages says %(given)s. Drop --stages or make it match."
                    )
                    % {
                        "name": funnel.name,
                        "existing": "; ".join(existing),
                        "given": "; ".join(stage_names),
                    }
                )
            ]
        )
    return existing


def _write(
    funnel: Funnel | None,
    funnel_name: str,
    stage_list: list[str],
    checked: list[_Deal],
    checker: _Checker,
) -> ImportResult:
    funnel_created = funnel is None
    if funnel is None:
        funnel = funnel_create(actor=None, name=funnel_name, stages=stage_list)
        existing_ids: set[str] = set()
    else:
        existing_ids = set(
            Deal.objects.filter(funnel=funnel, external_id__isnull=False).values_list(
                "external_id", flat=True
            )
        )
    new = [deal for deal in checked if deal.external_id not in existing_ids]
    stage_ids = list(funnel.stages.order_by("position").values_list("pk", flat=True))
    owner_ids = _owners_create(funnel, checker.owners, {d.new_owner for d in new} - {None})
    reason_ids, reasons_added = _reasons_add(funnel, checker.reasons, {d.reason for d in new})
    contact_ids, contacts_created = _contacts(new)
    plans = [
        DealPlan(
            title=deal.title,
            created_at=deal.created_at,
            path=[(stage_ids[position], at) for position, at in deal.path],
            status=deal.status,
            closed_at=deal.closed_at,
            loss_reason_id=reason_ids[deal.reason] if deal.reason else None,
            loss_comment=deal.loss_comment,
            next_contact_at=deal.next_contact_at,
            owner_id=deal.owner_id or owner_ids.get(deal.new_owner),
            contact_id=contact_ids[deal.client.key] if deal.client else None,
            amount=deal.amount,
            source=deal.source,
            product=deal.product,
            region=deal.region,
            temperature=deal.temperature,
            external_id=deal.external_id,
        )
        for deal in new
    ]
    deals_bulk_load(funnel=funnel, plans=plans)
    return ImportResult(
        funnel=funnel,
        funnel_created=funnel_created,
        created=len(plans),
        already_imported=len(checked) - len(plans),
        owners_created=sorted(checker.owners.new[key].username for key in owner_ids),
        loss_reasons_added=reasons_added,
        contacts_created=contacts_created,
    )


def _owners_create(funnel: Funnel, owners: _Owners, keys: set[str]) -> dict[str, int]:
    """Users who cannot log in (no usable password) until an admin sets one; funnel members."""
    users = []
    for key in sorted(keys):
        plan = owners.new[key]
        user = User(
            username=plan.username,
            first_name=plan.first_name,
            last_name=plan.last_name,
            role=Role.MANAGER,
        )
        user.set_unusable_password()
        users.append((key, user))
    if not users:
        return {}
    User.objects.bulk_create([user for _key, user in users])
    funnel.members.add(*(user for _key, user in users))
    return {key: user.pk for key, user in users}


def _reasons_add(
    funnel: Funnel, reasons: _Reasons, keys: set[str | None]
) -> tuple[dict[str, int], list[str]]:
    """Ids of the reasons by key, adding those the new deals use and the funnel lacks."""
    ids: dict[str, int] = {}
    for pk, name in (
        LossReason.objects.filter(funnel=funnel)
        .order_by("position", "id")
        .values_list("pk", "name")
    ):
        ids.setdefault(_folded(name), pk)
    added = []
    for key, name in reasons.names.items():
        if key in keys and key not in ids:
            reason = loss_reason_add(
                actor=None, funnel=funnel, name=name, requires_comment=reasons.needs_comment(key)
            )
            ids[key] = reason.pk
            added.append(reason.name)
    return ids, added


def _contacts(deals: list[_Deal]) -> tuple[dict[tuple[str, str], int], int]:
    """Each client key's contact: an existing one (the oldest match) or a new one, in bulk.

    Phones and emails match the normalised columns, as ``contact_find_or_create``
    does; a client given only by name matches a contact with that exact name.
    """
    first: dict[tuple[str, str], _Client] = {}
    named: dict[tuple[str, str], str] = {}
    created_at: dict[tuple[str, str], datetime.datetime] = {}
    for deal in deals:
        client = deal.client
        if client is None:
            continue
        key = client.key
        first.setdefault(key, client)
        if client.name:
            named.setdefault(key, client.name)
        if key not in created_at or deal.created_at < created_at[key]:
            created_at[key] = deal.created_at
    ids: dict[tuple[str, str], int] = {}
    size = min(LOOKUP_CHUNK, connection.features.max_query_params or LOOKUP_CHUNK)
    for kind, column in (("phone", "phone_normalized"), ("email", "email_normalized")):
        values = sorted(value for k, value in first if k == kind)
        for offset in range(0, len(values), size):
            chunk = values[offset : offset + size]
            for value, pk in (
                Contact.objects.filter(**{f"{column}__in": chunk})
                .order_by("id")
                .values_list(column, "id")
            ):
                ids.setdefault((kind, value), pk)
    spellings = sorted({client.name for key, client in first.items() if key[0] == "name"})
    for offset in range(0, len(spellings), size):
        chunk = spellings[offset : offset + size]
        for name, pk in (
            Contact.objects.filter(name__in=chunk).order_by("id").values_list("name", "id")
        ):
            ids.setdefault(("name", _folded(name)), pk)
    missing = [key for key in first if key not in ids]
    rows = [
        (
            named.get(key) or first[key].phone or first[key].email,
            first[key].phone,
            first[key].email,
            "",
            normalize_phone(first[key].phone),
            normalize_email(first[key].email),
            created_at[key],
        )
        for key in missing
    ]
    new_ids = insert_rows_with_ids(Contact, CONTACT_COLUMNS, rows)
    ids.update(zip(missing, new_ids, strict=True))
    return ids, len(rows)
