"""Keep the per-deal analytics summaries in step with the history.

The ``record_*`` functions are called by ``deals.services`` inside the same
transaction as the change they describe, so the figures are never stale.
``facts_rebuild`` derives the same summaries from the history alone: the
importer uses it, reordering stages uses it, and tests check that both paths
agree.

Definitions (METRICS.md): a deal *reaches* position k when the highest
position it ever entered becomes >= k, or when it is won (a won deal has
reached every stage). Time in a stage runs from entering it to leaving it
(next stage change or close), summed over visits.
"""

import datetime
from collections import defaultdict
from collections.abc import Iterable

from django.db.models import F, Max

from analytics.models import StageReach, StageTime
from crm.db import insert_objects, insert_rows, update_rows
from deals.models import Deal, DealStatus, Note, StageChange, StatusChange, Task
from funnels.models import Funnel, Stage


def _last_position(funnel_id: int) -> int:
    return Stage.objects.filter(funnel_id=funnel_id).aggregate(m=Max("position"))["m"] or 0


def _reach(deal: Deal, up_to: int, at: datetime.datetime, *, first: bool = False) -> None:
    start = 0 if first else deal.reached_position + 1
    if up_to < start:
        return
    insert_objects(_reaches(deal, range(start, up_to + 1), at))
    deal.reached_position = up_to


def _reaches(deal: Deal, positions: Iterable[int], at: datetime.datetime) -> list[StageReach]:
    return [
        StageReach(
            deal=deal,
            funnel_id=deal.funnel_id,
            entered_at=deal.created_at,
            position=position,
            reached_at=at,
        )
        for position in positions
    ]


def _start_visit(deal: Deal, stage_id: int, at: datetime.datetime) -> None:
    # The caller holds the deal's row lock, so update-or-insert cannot race.
    revisited = StageTime.objects.filter(deal=deal, stage_id=stage_id).update(
        visits=F("visits") + 1, visit_started_at=at
    )
    if not revisited:
        StageTime.objects.create(
            deal=deal,
            stage_id=stage_id,
            funnel_id=deal.funnel_id,
            owner_id=deal.owner_id,
            entered_at=deal.created_at,
            visits=1,
            visit_started_at=at,
        )


def _end_visit(deal: Deal, stage_id: int, at: datetime.datetime) -> None:
    row = StageTime.objects.filter(deal=deal, stage_id=stage_id).first()
    if row is None or row.visit_started_at is None:
        return
    row.seconds += (at - row.visit_started_at).total_seconds()
    row.visit_started_at = None
    row.last_left_at = at
    row.save(update_fields=["seconds", "visit_started_at", "last_left_at"])


def _responded(deal: Deal, actor, at: datetime.datetime) -> list[str]:
    if actor is None or deal.first_response_at is not None:
        return []
    deal.first_response_at = at
    return ["first_response_at"]


def record_created(deals: list[Deal], at: datetime.datetime) -> None:
    """New deals (saved with ``reached_position`` = their entry stage's position and
    ``is_repeat_client`` from ``repeat_clients``) reached every position up to their
    entry stage and start a visit there. Two statements for any number of deals."""
    insert_objects(
        [reach for deal in deals for reach in _reaches(deal, range(deal.stage.position + 1), at)]
    )
    insert_objects(
        [
            StageTime(
                deal=deal,
                stage_id=deal.stage_id,
                funnel_id=deal.funnel_id,
                owner_id=deal.owner_id,
                entered_at=deal.created_at,
                visits=1,
                visit_started_at=at,
            )
            for deal in deals
        ]
    )


def repeat_clients(contact_ids: Iterable[int]) -> set[int]:
    """The clients among these for whom a new (open) deal is a repeat sale: those with a
    won deal (the rule of ``client_types_refresh`` for a deal that is not closed)."""
    ids = [pk for pk in contact_ids if pk is not None]
    if not ids:
        return set()
    return set(
        Deal.objects.filter(contact_id__in=ids, status=DealStatus.WON).values_list(
            "contact_id", flat=True
        )
    )


def record_client_changed(deal: Deal) -> None:
    """The deal got a client: whether it is a repeat sale depends on his other deals."""
    if deal.contact_id is not None:
        client_types_refresh([deal.contact_id])
        deal.is_repeat_client = Deal.objects.values_list("is_repeat_client", flat=True).get(
            pk=deal.pk
        )


def client_types_refresh(
    contact_ids: Iterable[int], *, current: tuple[int, str, datetime.datetime | None] | None = None
) -> None:
    """Recompute ``is_repeat_client`` for every deal of these clients.

    ``current`` = (deal id, status, closed_at) overrides a deal whose change is
    not saved yet. A deal is a repeat one when the client has another won deal
    closed before this deal closed (or at all, while it is open).
    """
    rows = list(
        Deal.objects.filter(contact_id__in=list(contact_ids)).values_list(
            "pk", "contact_id", "status", "closed_at", "is_repeat_client"
        )
    )
    if current is not None:
        rows = [
            (pk, contact, *current[1:], flag) if pk == current[0] else (pk, contact, st, at, flag)
            for pk, contact, st, at, flag in rows
        ]
    won: dict[int, list[tuple[datetime.datetime, int]]] = defaultdict(list)
    for pk, contact, status, closed_at, _flag in rows:
        if status == DealStatus.WON:
            won[contact].append((closed_at, pk))
    changed = []
    for pk, contact, _status, closed_at, flag in rows:
        repeat = any(
            other != pk and (closed_at is None or won_at < closed_at)
            for won_at, other in won[contact]
        )
        if repeat != flag:
            changed.append((repeat, pk))
    update_rows(Deal, ["is_repeat_client"], changed)


def record_stage_entered(
    deal: Deal, from_stage: Stage, to_stage: Stage, actor, at: datetime.datetime
) -> list[str]:
    """Return the deal fields it changed; the caller saves them with its own."""
    changed = _responded(deal, actor, at)
    _end_visit(deal, from_stage.pk, at)
    _start_visit(deal, to_stage.pk, at)
    if to_stage.position > deal.reached_position:
        _reach(deal, to_stage.position, at)
        changed.append("reached_position")
    return changed


def record_status_changed(
    deal: Deal, from_status: str, to_status: str, actor, at: datetime.datetime
) -> list[str]:
    """Closing ends the stage visit (a win reaches every stage); reopening starts one."""
    changed = _responded(deal, actor, at)
    closed = (DealStatus.WON, DealStatus.LOST)
    if deal.contact_id is not None:  # closing or winning changes what counts as "before"
        client_types_refresh(
            [deal.contact_id], current=(deal.pk, to_status, at if to_status in closed else None)
        )
        deal.is_repeat_client = Deal.objects.values_list("is_repeat_client", flat=True).get(
            pk=deal.pk
        )
    if to_status in closed and from_status not in closed:
        _end_visit(deal, deal.stage_id, at)
    if from_status in closed and to_status not in closed:
        _start_visit(deal, deal.stage_id, at)
    if to_status == DealStatus.WON:
        last = _last_position(deal.funnel_id)
        if last > deal.reached_position:
            _reach(deal, last, at)
            changed.append("reached_position")
    return changed


def record_owner_changed(deal: Deal) -> None:
    """Per-manager figures follow the deal's current owner."""
    StageTime.objects.filter(deal=deal).update(owner_id=deal.owner_id)


def record_activity(deal: Deal, actor, at: datetime.datetime) -> list[str]:
    """A note or a completed task: counts as the first response if it is the first."""
    return _responded(deal, actor, at)


# ------------------------------------------------------------------ rebuild


def _events(deal_ids: list[int]) -> dict[int, list[tuple]]:
    """Each deal's history in time order: ('stage', at, to_stage_id) and ('status', at, to)."""
    events: dict[int, list[tuple]] = defaultdict(list)
    for deal_id, at, pk, to_stage_id in StageChange.objects.filter(
        deal_id__in=deal_ids
    ).values_list("deal_id", "at", "id", "to_stage_id"):
        events[deal_id].append((at, 0, pk, "stage", to_stage_id))
    for deal_id, at, pk, to_status in StatusChange.objects.filter(deal_id__in=deal_ids).values_list(
        "deal_id", "at", "id", "to_status"
    ):
        events[deal_id].append((at, 1, pk, "status", to_status))
    for items in events.values():
        items.sort()
    return events


def _first_responses(deal_ids: list[int]) -> dict[int, datetime.datetime]:
    first: dict[int, datetime.datetime] = {}

    def take(rows: Iterable[tuple]) -> None:
        for deal_id, at in rows:
            if at is not None and (deal_id not in first or at < first[deal_id]):
                first[deal_id] = at

    take(
        StageChange.objects.filter(
            deal_id__in=deal_ids, actor__isnull=False, from_stage__isnull=False
        ).values_list("deal_id", "at")
    )
    take(
        StatusChange.objects.filter(deal_id__in=deal_ids, actor__isnull=False).values_list(
            "deal_id", "at"
        )
    )
    take(
        Note.objects.filter(deal_id__in=deal_ids, author__isnull=False).values_list(
            "deal_id", "created_at"
        )
    )
    take(
        Task.objects.filter(deal_id__in=deal_ids, done_at__isnull=False).values_list(
            "deal_id", "done_at"
        )
    )
    return first


class Replay:
    """One deal's history played forward, producing its summaries.

    ``play`` takes events ``(at, order, tie, kind, value)`` sorted by time, where
    kind is "stage" (value: the entered stage id) or "status" (value: the new
    status); order 0 for stage changes and 1 for status changes at the same instant.
    """

    def __init__(self) -> None:
        self.reached = -1
        self.reaches: list[tuple[int, datetime.datetime]] = []  # (position, reached_at)
        # stage id -> [seconds, visits, visit_started_at, last_left_at]
        self.visits: dict[int, list] = {}

    def reach(self, up_to: int, at: datetime.datetime) -> None:
        self.reaches.extend((position, at) for position in range(self.reached + 1, up_to + 1))
        self.reached = max(self.reached, up_to)

    def start(self, stage_id: int, at: datetime.datetime) -> None:
        row = self.visits.setdefault(stage_id, [0.0, 0, None, None])
        row[1] += 1
        row[2] = at

    def end(self, stage_id: int, at: datetime.datetime) -> None:
        row = self.visits.get(stage_id)
        if row is not None and row[2] is not None:
            row[0] += (at - row[2]).total_seconds()
            row[2] = None
            row[3] = at

    def play(self, events: list[tuple], positions: dict[int, int], last_position: int) -> None:
        stage_id = None
        closed = False
        for at, _order, _tie, kind, value in events:
            if kind == "stage":
                if stage_id is not None and not closed:
                    self.end(stage_id, at)
                stage_id = value
                if not closed:
                    self.start(stage_id, at)
                self.reach(positions[value], at)
                continue
            now_closed = value in (DealStatus.WON, DealStatus.LOST)
            if now_closed and not closed:
                self.end(stage_id, at)
            elif closed and not now_closed:
                self.start(stage_id, at)
            closed = now_closed
            if value == DealStatus.WON:
                self.reach(last_position, at)

    def reach_rows(
        self, deal_id: int, funnel_id: int, entered_at: datetime.datetime
    ) -> list[tuple]:
        """Rows for ``insert_rows(StageReach, REACH_COLUMNS, ...)``."""
        return [(deal_id, funnel_id, entered_at, position, at) for position, at in self.reaches]

    def time_rows(
        self, deal_id: int, funnel_id: int, owner_id: int | None, entered_at: datetime.datetime
    ) -> list[tuple]:
        """Rows for ``insert_rows(StageTime, TIME_COLUMNS, ...)``."""
        return [
            (deal_id, funnel_id, stage_id, owner_id, entered_at, *row)
            for stage_id, row in self.visits.items()
        ]


REACH_COLUMNS = ("deal", "funnel", "entered_at", "position", "reached_at")
TIME_COLUMNS = (
    "deal",
    "funnel",
    "stage",
    "owner",
    "entered_at",
    "seconds",
    "visits",
    "visit_started_at",
    "last_left_at",
)


def facts_rebuild(
    *, funnel: Funnel | None = None, deal_ids: list[int] | None = None, chunk: int = 5000
) -> int:
    """Recompute StageReach, StageTime and the deal's summary fields from history.

    For one funnel, a list of deals, or everything. Returns the number of deals.
    Call inside a transaction.
    """
    deals = Deal.objects.all()
    if funnel is not None:
        deals = deals.filter(funnel=funnel)
    if deal_ids is not None:
        deals = deals.filter(pk__in=deal_ids)
    positions = dict(Stage.objects.values_list("id", "position"))
    last_positions = dict(
        Stage.objects.values("funnel_id").annotate(m=Max("position")).values_list("funnel_id", "m")
    )
    ids = list(deals.order_by("pk").values_list("pk", flat=True))
    for offset in range(0, len(ids), chunk):
        batch = ids[offset : offset + chunk]
        StageReach.objects.filter(deal_id__in=batch).delete()
        StageTime.objects.filter(deal_id__in=batch).delete()
        events = _events(batch)
        responses = _first_responses(batch)
        funnel_of, owner_of, entered_of = {}, {}, {}
        for pk, funnel_id, owner_id, created_at in Deal.objects.filter(pk__in=batch).values_list(
            "pk", "funnel_id", "owner_id", "created_at"
        ):
            funnel_of[pk], owner_of[pk], entered_of[pk] = funnel_id, owner_id, created_at
        reaches: list[tuple] = []
        times: list[tuple] = []
        updates: list[tuple] = []
        for deal_id in batch:
            funnel_id = funnel_of[deal_id]
            replay = Replay()
            replay.play(events.get(deal_id, []), positions, last_positions[funnel_id])
            reaches += replay.reach_rows(deal_id, funnel_id, entered_of[deal_id])
            times += replay.time_rows(deal_id, funnel_id, owner_of[deal_id], entered_of[deal_id])
            updates.append((max(replay.reached, 0), responses.get(deal_id), deal_id))
        insert_rows(StageReach, REACH_COLUMNS, reaches)
        insert_rows(StageTime, TIME_COLUMNS, times)
        update_rows(Deal, ["reached_position", "first_response_at"], updates)
        client_types_refresh(
            Deal.objects.filter(pk__in=batch, contact__isnull=False)
            .values_list("contact_id", flat=True)
            .distinct()
        )
    return len(ids)


def record_stage_added(stage: Stage) -> None:
    """Won deals have reached every stage, a stage added later included."""
    won = list(
        Deal.objects.filter(funnel_id=stage.funnel_id, status=DealStatus.WON).values_list(
            "pk", "closed_at", "created_at"
        )
    )
    StageReach.objects.bulk_create(
        (
            StageReach(
                deal_id=pk,
                funnel_id=stage.funnel_id,
                entered_at=entered_at,
                position=stage.position,
                reached_at=at,
            )
            for pk, at, entered_at in won
        ),
        batch_size=5000,
        ignore_conflicts=True,
    )
    Deal.objects.filter(pk__in=[pk for pk, _, _ in won]).update(reached_position=stage.position)
