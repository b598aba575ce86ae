"""Bulk loading of deals with their history: the importer's and the benchmark's path.

It writes exactly the rows the service functions would have written (the deal,
its StageChange and StatusChange rows) and derives the analytics summaries from
that same history with ``analytics.facts.Replay``, the code ``facts_rebuild``
uses, so figures over loaded data are exact. Rules are checked by the caller (the importer
validates every row first); this module only writes, fast, in one transaction.
"""

import dataclasses
import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from analytics.facts import REACH_COLUMNS, TIME_COLUMNS, Replay, client_types_refresh
from analytics.models import StageReach, StageTime
from crm.db import insert_rows, insert_rows_with_ids
from deals.models import Deal, DealStatus, StageChange, StatusChange
from funnels.models import Funnel, Stage


@dataclasses.dataclass
class DealPlan:
    """One deal's whole story: where it went and how it ended."""

    title: str
    created_at: datetime.datetime
    path: list[tuple[int, datetime.datetime]]  # (stage id, entered at); first = entry stage
    status: str = DealStatus.OPEN
    closed_at: datetime.datetime | None = None  # when won or lost
    # A manager's first action on it. Only the benchmark sets it, and no history row
    # backs it: ``facts_rebuild`` derives it from the history and would clear it.
    first_response_at: datetime.datetime | None = None
    loss_reason_id: int | None = None
    loss_comment: str = ""
    next_contact_at: datetime.datetime | None = None  # when postponed
    postponed_at: datetime.datetime | None = None
    owner_id: int | None = None
    contact_id: int | None = None
    amount: Decimal | None = None
    source: str = ""
    product: str = ""
    region: str = ""
    temperature: str = ""
    external_id: str | None = None
    custom_fields: dict = dataclasses.field(default_factory=dict)


DEAL_COLUMNS = (
    "funnel",
    "stage",
    "status",
    "title",
    "owner",
    "contact",
    "amount",
    "source",
    "product",
    "region",
    "temperature",
    "next_contact_at",
    "loss_reason",
    "loss_comment",
    "custom_fields",
    "external_id",
    "created_at",
    "stage_entered_at",
    "closed_at",
    "updated_at",
    "version",
    "reached_position",
    "is_repeat_client",
    "first_response_at",
)
STAGE_CHANGE_COLUMNS = ("deal", "from_stage", "to_stage", "at", "actor")
STATUS_CHANGE_COLUMNS = (
    "deal",
    "from_status",
    "to_status",
    "at",
    "actor",
    "stage",
    "loss_reason",
    "comment",
    "next_contact_at",
)


def _history(plan: DealPlan) -> tuple[list[tuple], list[tuple]]:
    """The plan's stage changes and status changes, as rows without the deal id."""
    stage_rows, previous = [], None
    for stage_id, at in plan.path:
        stage_rows.append((previous, stage_id, at, None))
        previous = stage_id
    status_rows = []
    last_stage = plan.path[-1][0]
    if plan.status == DealStatus.POSTPONED:
        at = plan.postponed_at or plan.path[-1][1]
        status_rows.append(
            (
                DealStatus.OPEN,
                DealStatus.POSTPONED,
                at,
                None,
                last_stage,
                None,
                "",
                plan.next_contact_at,
            )
        )
    elif plan.status in (DealStatus.WON, DealStatus.LOST):
        reason = plan.loss_reason_id if plan.status == DealStatus.LOST else None
        status_rows.append(
            (
                DealStatus.OPEN,
                plan.status,
                plan.closed_at,
                None,
                last_stage,
                reason,
                plan.loss_comment,
                None,
            )
        )
    return stage_rows, status_rows


def _events(stage_rows: list[tuple], status_rows: list[tuple]) -> list[tuple]:
    events = [(at, 0, i, "stage", to_stage) for i, (_f, to_stage, at, _a) in enumerate(stage_rows)]
    events += [(row[2], 1, i, "status", row[1]) for i, row in enumerate(status_rows)]
    return sorted(events)


def deals_bulk_load(*, funnel: Funnel, plans: list[DealPlan], batch_size: int = 5000) -> list[int]:
    """Write the deals, their history and their analytics summaries; return the new ids."""
    positions = dict(Stage.objects.filter(funnel=funnel).values_list("id", "position"))
    last_position = max(positions.values())
    now = timezone.now()
    ids: list[int] = []
    with transaction.atomic():
        for offset in range(0, len(plans), batch_size):
            batch = plans[offset : offset + batch_size]
            histories = [_history(plan) for plan in batch]
            replays = []
            for stage_rows, status_rows in histories:
                replay = Replay()
                replay.play(_events(stage_rows, status_rows), positions, last_position)
                replays.append(replay)
            rows = [
                (
                    funnel.pk,
                    plan.path[-1][0],
                    plan.status,
                    plan.title,
                    plan.owner_id,
                    plan.contact_id,
                    plan.amount,
                    plan.source,
                    plan.product,
                    plan.region,
                    plan.temperature,
                    plan.next_contact_at if plan.status == DealStatus.POSTPONED else None,
                    plan.loss_reason_id if plan.status == DealStatus.LOST else None,
                    plan.loss_comment,
                    plan.custom_fields,
                    plan.external_id,
                    plan.created_at,
                    plan.path[-1][1],
                    plan.closed_at if plan.status in (DealStatus.WON, DealStatus.LOST) else None,
                    now,
                    1,
                    max(replay.reached, 0),
                    False,
                    plan.first_response_at,
                )
                for plan, replay in zip(batch, replays, strict=True)
            ]
            deal_ids = insert_rows_with_ids(Deal, DEAL_COLUMNS, rows)
            stage_changes, status_changes, reaches, times = [], [], [], []
            for deal_id, plan, (stage_rows, status_rows), replay in zip(
                deal_ids, batch, histories, replays, strict=True
            ):
                stage_changes += [(deal_id, *row) for row in stage_rows]
                status_changes += [(deal_id, *row) for row in status_rows]
                reaches += replay.reach_rows(deal_id, funnel.pk, plan.created_at)
                times += replay.time_rows(deal_id, funnel.pk, plan.owner_id, plan.created_at)
            insert_rows(StageChange, STAGE_CHANGE_COLUMNS, stage_changes)
            insert_rows(StatusChange, STATUS_CHANGE_COLUMNS, status_changes)
            insert_rows(StageReach, REACH_COLUMNS, reaches)
            insert_rows(StageTime, TIME_COLUMNS, times)
            contacts = {plan.contact_id for plan in batch if plan.contact_id is not None}
            if contacts:
                client_types_refresh(contacts)
            ids += deal_ids
    return ids
