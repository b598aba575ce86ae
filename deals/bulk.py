"""Bulk loading of deals with their history: the importer's and the benchmark's path.

It writes exactly the rows the service functions would have written (the deal,
its StageChange and StatusChange rows) and then derives the analytics
summaries from that history with ``analytics.facts.facts_rebuild``, so figures
over loaded data are exact. Rules are checked by the caller (the importer
validates every row first); this module only writes, fast, in one transaction.
"""

import dataclasses
import datetime
from decimal import Decimal

from django.db import transaction

from analytics.facts import facts_rebuild
from deals.models import Deal, DealStatus, StageChange, StatusChange
from funnels.models import Funnel


@dataclasses.dataclass
class DealPlan:
    """One deal's whole story: where it went and how it ended."""

    title: str
    created_at: datetime.datetime
    path: list[tuple[int, datetime.datetime]]  # (stage id, entered at); first = entry stage
    status: str = DealStatus.OPEN
    closed_at: datetime.datetime | None = None  # when won or lost
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


def deals_bulk_load(*, funnel: Funnel, plans: list[DealPlan], batch_size: int = 2000) -> list[int]:
    """Write the deals and their history; return the new deal ids in plan order."""
    ids: list[int] = []
    with transaction.atomic():
        for offset in range(0, len(plans), batch_size):
            batch = plans[offset : offset + batch_size]
            deals = Deal.objects.bulk_create(
                [
                    Deal(
                        funnel=funnel,
                        stage_id=plan.path[-1][0],
                        status=plan.status,
                        title=plan.title,
                        owner_id=plan.owner_id,
                        contact_id=plan.contact_id,
                        amount=plan.amount,
                        source=plan.source,
                        product=plan.product,
                        region=plan.region,
                        temperature=plan.temperature,
                        next_contact_at=plan.next_contact_at
                        if plan.status == DealStatus.POSTPONED
                        else None,
                        loss_reason_id=plan.loss_reason_id
                        if plan.status == DealStatus.LOST
                        else None,
                        loss_comment=plan.loss_comment,
                        custom_fields=plan.custom_fields,
                        external_id=plan.external_id,
                        created_at=plan.created_at,
                        stage_entered_at=plan.path[-1][1],
                        closed_at=plan.closed_at
                        if plan.status in (DealStatus.WON, DealStatus.LOST)
                        else None,
                    )
                    for plan in batch
                ]
            )
            if deals and deals[0].pk is None:  # backends without RETURNING
                raise RuntimeError("bulk loading needs a database that returns new ids")
            stage_changes: list[StageChange] = []
            status_changes: list[StatusChange] = []
            for deal, plan in zip(deals, batch, strict=True):
                previous = None
                for stage_id, at in plan.path:
                    stage_changes.append(
                        StageChange(deal=deal, from_stage_id=previous, to_stage_id=stage_id, at=at)
                    )
                    previous = stage_id
                if plan.status == DealStatus.POSTPONED:
                    status_changes.append(
                        StatusChange(
                            deal=deal,
                            from_status=DealStatus.OPEN,
                            to_status=DealStatus.POSTPONED,
                            at=plan.postponed_at or plan.path[-1][1],
                            stage_id=plan.path[-1][0],
                            next_contact_at=plan.next_contact_at,
                        )
                    )
                elif plan.status in (DealStatus.WON, DealStatus.LOST):
                    status_changes.append(
                        StatusChange(
                            deal=deal,
                            from_status=DealStatus.OPEN,
                            to_status=plan.status,
                            at=plan.closed_at,
                            stage_id=plan.path[-1][0],
                            loss_reason_id=plan.loss_reason_id
                            if plan.status == DealStatus.LOST
                            else None,
                            comment=plan.loss_comment,
                        )
                    )
                ids.append(deal.pk)
            StageChange.objects.bulk_create(stage_changes, batch_size=5000)
            StatusChange.objects.bulk_create(status_changes, batch_size=5000)
            facts_rebuild(deal_ids=[deal.pk for deal in deals])
    return ids
