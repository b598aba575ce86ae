"""Synthetic funnel history for the analytics benchmark (``manage.py bench_analytics``).

Deals are planned by a seeded RNG and written with ``deals.bulk.deals_bulk_load``,
the importer's path: real history rows, summaries derived from them.
"""

import datetime
import random
from collections.abc import Iterator
from decimal import Decimal

from django.contrib.auth.hashers import make_password
from django.utils import timezone

from accounts.models import User
from deals.bulk import DealPlan
from deals.models import DealStatus
from funnels.models import Funnel
from funnels.services import funnel_create

STAGES = ["New request", "Qualified", "Offer sent", "Contract signed", "Paid"]
# Chance of moving on from each stage; managers multiply it by their skill.
PASS = [0.72, 0.45, 0.68, 0.8]
WIN_FROM_LAST = 0.85
SOURCES = ["site", "yandex_direct", "vk_ads", "referral", "cold_call", "exhibition"]
PRODUCTS = ["CRM setup", "Training", "Support", "Licences", "Consulting"]
REGIONS = [
    "Moscow",
    "Saint Petersburg",
    "Kazan",
    "Yekaterinburg",
    "Novosibirsk",
    "Samara",
    "Nizhny Novgorod",
    "Krasnodar",
]
MANAGERS = 20


def bench_funnel(name: str) -> Funnel:
    funnel = Funnel.objects.filter(name=name).first()
    if funnel is None:
        funnel = funnel_create(
            actor=None,
            name=name,
            stages=[
                {"name": n, "probability": p, "rotting_days": r}
                for n, p, r in zip(STAGES, [10, 25, 50, 80, 95], [2, 7, 10, 14, 30], strict=True)
            ],
        )
    password = make_password(None)
    for i in range(MANAGERS):
        User.objects.get_or_create(
            username=f"bench{i:02d}",
            defaults={"first_name": "Bench", "last_name": f"Manager {i:02d}", "password": password},
        )
    funnel.members.set(User.objects.filter(username__startswith="bench"))
    return funnel


def _first_response(
    rng: random.Random,
    created: datetime.datetime,
    path: list,
    closed_at: datetime.datetime | None,
    now: datetime.datetime,
) -> datetime.datetime | None:
    """A manager answers most new leads within minutes, some within hours, and one
    in twenty never, unless he moves or closes the deal: that is a response too."""
    acted = [at for at in [*(at for _stage, at in path[1:]), closed_at] if at is not None]
    if rng.random() < 0.05:
        answered = None
    elif rng.random() < 0.8:
        answered = created + datetime.timedelta(minutes=rng.expovariate(1 / 15))
    else:
        answered = created + datetime.timedelta(hours=rng.expovariate(1 / 6))
    candidates = [at for at in [answered, *acted] if at is not None and at < now]
    return min(candidates, default=None)


def plan_deals(
    funnel: Funnel, *, count: int, seed: int, days: int = 730, now: datetime.datetime | None = None
) -> Iterator[DealPlan]:
    """``count`` deals entered over the last ``days`` days, oldest first."""
    rng = random.Random(seed)
    # Response times come from a generator of their own, so that the rest of a seed's
    # deals stay what they were before responses were planned.
    responses = random.Random(seed + 1_000_003)
    now = now or timezone.now()
    stages = list(funnel.stages.order_by("position").values_list("pk", flat=True))
    reasons = list(funnel.loss_reasons.filter(requires_comment=False).values_list("pk", flat=True))
    owners = list(
        User.objects.filter(username__startswith="bench")
        .order_by("username")
        .values_list("pk", flat=True)
    )
    skill = {owner: 0.75 + 0.5 * rng.random() for owner in owners}
    span = days * 86400
    for i in range(count):
        created = now - datetime.timedelta(seconds=span * (1 - i / count) + rng.random() * 60)
        owner = rng.choice(owners)
        temperature = rng.choice(["warm", "warm", "cold"])
        factor = skill[owner] * (1.1 if temperature == "warm" else 0.8)
        at = created
        position = 0
        path = [(stages[0], at)]
        outcome = DealStatus.OPEN
        while True:
            if position == len(stages) - 1:
                outcome = DealStatus.WON if rng.random() < WIN_FROM_LAST else DealStatus.LOST
                break
            if rng.random() > min(PASS[position] * factor, 0.97):
                outcome = DealStatus.LOST if rng.random() < 0.8 else DealStatus.OPEN
                break
            step = 2 if rng.random() < 0.08 and position + 2 < len(stages) else 1
            at = at + datetime.timedelta(hours=rng.expovariate(1 / 40))
            if at >= now:
                break
            position += step
            path.append((stages[position], at))
            if rng.random() < 0.04 and position > 0:  # a step back and forward again
                at = at + datetime.timedelta(hours=rng.expovariate(1 / 20))
                if at >= now:
                    break
                path.append((stages[position - 1], at))
                position -= 1
        closed_at = None
        if outcome != DealStatus.OPEN:
            closed_at = at + datetime.timedelta(hours=rng.expovariate(1 / 30))
            if closed_at >= now:
                outcome, closed_at = DealStatus.OPEN, None
        yield DealPlan(
            title=f"Bench deal {i}",
            created_at=created,
            path=path,
            status=outcome,
            closed_at=closed_at,
            first_response_at=_first_response(responses, created, path, closed_at, now),
            loss_reason_id=rng.choice(reasons) if outcome == DealStatus.LOST else None,
            owner_id=owner,
            amount=Decimal(rng.randrange(10_000, 500_000, 1000)),
            source=rng.choice(SOURCES),
            product=rng.choice(PRODUCTS),
            region=rng.choice(REGIONS),
            temperature=temperature,
        )
