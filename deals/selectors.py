"""Reads of deals: who sees what, and the history of one deal."""

import dataclasses
import datetime
import re
from collections.abc import Iterable
from decimal import Decimal

from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Sum, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from accounts.models import Team, User
from deals.models import Deal, DealStatus, Note, StageChange, StatusChange, Task
from funnels.models import Funnel, Stage


def _team_member_ids(head: User) -> QuerySet:
    return User.objects.filter(team__in=Team.objects.filter(head=head)).values("id")


def deals_visible_to(user: User) -> QuerySet[Deal]:
    """Deals a user may see and change.

    A manager: his own deals and the unassigned leads of his funnels. A head
    of sales: his own, his teams' and the unassigned leads of the funnels he
    or his teams work. An admin: everything.
    """
    deals = Deal.objects.all()
    if user.is_admin_role:
        return deals
    if user.is_head:
        people = Q(pk=user.pk) | Q(pk__in=_team_member_ids(user))
        funnels = Funnel.objects.filter(members__in=User.objects.filter(people)).values("id")
        return deals.filter(
            Q(owner=user)
            | Q(owner__in=_team_member_ids(user))
            | Q(owner__isnull=True, funnel__in=funnels)
        )
    return deals.filter(Q(owner=user) | Q(owner__isnull=True, funnel__in=user.funnels.values("id")))


def user_can_change_deal(user: User, deal: Deal) -> bool:
    """The same rule as ``deals_visible_to``, for one deal already loaded."""
    if user.is_admin_role:
        return True
    if deal.owner_id == user.pk:
        return True
    if user.is_head:
        team_ids = set(Team.objects.filter(head=user).values_list("id", flat=True))
        if deal.owner_id is not None:
            return deal.owner.team_id in team_ids
        return deal.funnel.members.filter(Q(pk=user.pk) | Q(team__in=team_ids)).exists()
    if deal.owner_id is None:
        return deal.funnel.members.filter(pk=user.pk).exists()
    return False


def deal_history(deal: Deal) -> dict[str, list]:
    """Stage and status changes, tasks and notes of a deal, each in time order."""
    return {
        "stage_changes": list(
            StageChange.objects.filter(deal=deal).select_related("from_stage", "to_stage", "actor")
        ),
        "status_changes": list(
            StatusChange.objects.filter(deal=deal).select_related("loss_reason", "actor", "stage")
        ),
        "tasks": list(Task.objects.filter(deal=deal).select_related("assignee")),
        "notes": list(Note.objects.filter(deal=deal).select_related("author")),
    }


# ---------------------------------------------------------------- the board

BOARD_COLUMN_LIMIT = 50
_CENTS = Decimal("0.01")


class TaskState:
    """The due state of a deal's next open task, as the board shows it."""

    OVERDUE = "overdue"
    TODAY = "today"
    LATER = "later"
    NONE = "none"


@dataclasses.dataclass
class BoardFilters:
    """What the board shows. ``owner`` is "me", "all" (everything visible),
    "none" (unassigned leads) or a user id."""

    owner: str = "all"
    source: str = ""
    temperature: str = ""
    search: str = ""

    @classmethod
    def from_query(cls, user: User, params) -> "BoardFilters":
        """Read the filters from a request's GET; a manager sees his own deals by default."""
        default_owner = "all" if (user.is_admin_role or user.is_head) else "me"
        return cls(
            owner=(params.get("owner") or default_owner).strip(),
            source=(params.get("source") or "").strip(),
            temperature=(params.get("temperature") or "").strip(),
            search=(params.get("q") or "").strip(),
        )

    def as_query(self) -> dict[str, str]:
        return {
            "owner": self.owner,
            "source": self.source,
            "temperature": self.temperature,
            "q": self.search,
        }


@dataclasses.dataclass
class BoardColumn:
    stage: Stage
    count: int
    amount_sum: Decimal
    deals: list[Deal]

    @property
    def has_more(self) -> bool:
        return self.count > len(self.deals)


@dataclasses.dataclass
class Board:
    funnel: Funnel
    filters: BoardFilters
    columns: list[BoardColumn]
    limit: int

    @property
    def count(self) -> int:
        return sum(column.count for column in self.columns)

    @property
    def amount_sum(self) -> Decimal:
        return sum((column.amount_sum for column in self.columns), Decimal(0))


def _board_deals(user: User, funnel: Funnel, filters: BoardFilters) -> QuerySet[Deal]:
    """The open deals of the funnel that the user may see and that pass the filters."""
    deals = deals_visible_to(user).filter(funnel=funnel, status=DealStatus.OPEN)
    if filters.owner == "me":
        deals = deals.filter(owner=user)
    elif filters.owner == "none":
        deals = deals.filter(owner__isnull=True)
    elif filters.owner.isdigit():
        deals = deals.filter(owner_id=int(filters.owner))
    if filters.source:
        deals = deals.filter(source=filters.source)
    if filters.temperature:
        deals = deals.filter(temperature=filters.temperature)
    if filters.search:
        text = filters.search
        match = (
            Q(title__icontains=text)
            | Q(contact__name__icontains=text)
            | Q(contact__company__icontains=text)
            | Q(contact__email_normalized__icontains=text.lower())
        )
        digits = re.sub(r"\D", "", text)
        if len(digits) >= 3:
            match |= Q(contact__phone_normalized__contains=digits)
        deals = deals.filter(match)
    return deals


def _with_card_data(deals: QuerySet[Deal]) -> QuerySet[Deal]:
    """Everything a board card shows, in the same query: no query per card."""
    next_task = Task.objects.filter(deal=OuterRef("pk"), done_at__isnull=True).order_by(
        "due_at", "id"
    )
    return deals.select_related("funnel", "stage", "owner", "contact").annotate(
        next_task_due_at=Subquery(next_task.values("due_at")[:1]),
        next_task_title=Subquery(next_task.values("title")[:1]),
    )


def _card_order() -> list:
    # The newest arrivals in a stage first, as on the boards managers know.
    return [F("stage_entered_at").desc(), F("id").desc()]


def _decorate_cards(deals: Iterable[Deal], now: datetime.datetime) -> list[Deal]:
    """Add the computed card facts: days in stage, next task state, rotting."""
    today = timezone.localdate(now)
    cards = list(deals)
    for deal in cards:
        deal.days_in_stage = max(0, (now - deal.stage_entered_at).days)
        rotting_days = deal.stage.rotting_days
        deal.is_rotting = rotting_days is not None and deal.days_in_stage >= rotting_days
        due = deal.next_task_due_at
        if due is None:
            deal.task_state = TaskState.NONE
        elif due < now:
            deal.task_state = TaskState.OVERDUE
        elif timezone.localdate(due) == today:
            deal.task_state = TaskState.TODAY
        else:
            deal.task_state = TaskState.LATER
    return cards


def deals_for_board(
    *,
    user: User,
    funnel: Funnel,
    filters: BoardFilters,
    limit: int = BOARD_COLUMN_LIMIT,
    now: datetime.datetime | None = None,
) -> Board:
    """The funnel's board for this user: a column per stage with its open deals.

    Three queries whatever the number of deals or stages: the stages, the count
    and amount per stage, and the first ``limit`` cards of every column (a
    window function ranks them per stage).
    """
    now = now or timezone.now()
    stages = list(funnel.stages.order_by("position"))
    deals = _board_deals(user, funnel, filters)
    totals = {
        row["stage_id"]: row
        for row in deals.order_by()
        .values("stage_id")
        .annotate(count=Count("id"), amount_sum=Sum("amount"))
    }
    ranked = (
        _with_card_data(deals)
        .annotate(rank=Window(RowNumber(), partition_by=[F("stage_id")], order_by=_card_order()))
        .filter(rank__lte=limit)
        .order_by(*_card_order())
    )
    by_stage: dict[int, list[Deal]] = {stage.pk: [] for stage in stages}
    for deal in _decorate_cards(ranked, now):
        by_stage.setdefault(deal.stage_id, []).append(deal)
    columns = [
        BoardColumn(
            stage=stage,
            count=totals.get(stage.pk, {}).get("count", 0),
            amount_sum=(totals.get(stage.pk, {}).get("amount_sum") or Decimal(0)).quantize(_CENTS),
            deals=by_stage[stage.pk],
        )
        for stage in stages
    ]
    return Board(funnel=funnel, filters=filters, columns=columns, limit=limit)


def board_column_page(
    *,
    user: User,
    stage: Stage,
    filters: BoardFilters,
    offset: int,
    limit: int = BOARD_COLUMN_LIMIT,
    now: datetime.datetime | None = None,
) -> tuple[list[Deal], bool]:
    """The next cards of one column (for "load more") and whether more follow."""
    now = now or timezone.now()
    deals = (
        _with_card_data(_board_deals(user, stage.funnel, filters))
        .filter(stage=stage)
        .order_by(*_card_order())
    )
    page = list(deals[offset : offset + limit + 1])
    return _decorate_cards(page[:limit], now), len(page) > limit


def board_card(*, user: User, deal_id: int, now: datetime.datetime | None = None) -> Deal | None:
    """One deal as a board card (after a move), or None if the user may not see it."""
    deal = _with_card_data(deals_visible_to(user)).filter(pk=deal_id).first()
    if deal is None:
        return None
    return _decorate_cards([deal], now or timezone.now())[0]


@dataclasses.dataclass
class BoardChoices:
    funnels: list[Funnel]
    owners: list[User]
    sources: list[str]


def board_choices(*, user: User, funnel: Funnel | None) -> BoardChoices:
    """The funnel switcher and the filter options of the board."""
    funnels = list(funnels_for_user(user))
    owners: list[User] = []
    sources: list[str] = []
    if funnel is not None:
        if user.is_admin_role or user.is_head:
            owners = list(
                User.objects.filter(Q(funnels=funnel) | Q(pk=user.pk), is_active=True)
                .distinct()
                .order_by("first_name", "last_name", "username")
            )
        sources = list(
            deals_visible_to(user)
            .filter(funnel=funnel)
            .exclude(source="")
            .order_by("source")
            .values_list("source", flat=True)
            .distinct()
        )
    return BoardChoices(funnels=funnels, owners=owners, sources=sources)


def funnels_for_user(user: User) -> QuerySet[Funnel]:
    """Active funnels a user works: all of them for admins and heads, his own for managers."""
    funnels = Funnel.objects.filter(is_active=True).order_by("name")
    if user.is_admin_role or user.is_head:
        return funnels
    return funnels.filter(members=user)


# ---------------------------------------------------------------- the deal card


def deal_for_user(*, user: User, deal_id: int) -> Deal | None:
    """The deal with its funnel, stage, owner and client, if the user may see it."""
    return (
        deals_visible_to(user)
        .select_related("funnel", "stage", "owner", "contact", "loss_reason")
        .filter(pk=deal_id)
        .first()
    )


@dataclasses.dataclass
class TimelineEntry:
    at: datetime.datetime
    kind: str  # "stage", "status", "task", "note"
    actor: User | None
    item: StageChange | StatusChange | Task | Note


def deal_timeline(deal: Deal) -> list[TimelineEntry]:
    """Stage and status changes, tasks (by creation) and notes of a deal, in time order."""
    history = deal_history(deal)
    entries = [
        *(TimelineEntry(c.at, "stage", c.actor, c) for c in history["stage_changes"]),
        *(TimelineEntry(c.at, "status", c.actor, c) for c in history["status_changes"]),
        *(TimelineEntry(t.created_at, "task", t.created_by, t) for t in history["tasks"]),
        *(TimelineEntry(n.created_at, "note", n.author, n) for n in history["notes"]),
    ]
    order = {"stage": 0, "status": 1, "task": 2, "note": 3}
    entries.sort(key=lambda entry: (entry.at, order[entry.kind], entry.item.pk))
    return entries


def deal_open_tasks(deal: Deal) -> list[Task]:
    return list(
        Task.objects.filter(deal=deal, done_at__isnull=True)
        .select_related("assignee")
        .order_by("due_at", "id")
    )


# ---------------------------------------------------------------- my tasks


@dataclasses.dataclass
class MyTasks:
    overdue: list[Task]
    today: list[Task]
    upcoming: list[Task]
    postponed_due: list[Deal]


def tasks_for_user(
    *, user: User, now: datetime.datetime | None = None, upcoming_limit: int = 100
) -> MyTasks:
    """A user's open tasks (overdue, due today, the next ``upcoming_limit``) and his
    postponed deals whose next-contact date has come."""
    now = now or timezone.now()
    local_now = timezone.localtime(now)
    end_of_today = local_now.replace(hour=0, minute=0, second=0, microsecond=0) + (
        datetime.timedelta(days=1)
    )
    open_tasks = Task.objects.filter(assignee=user, done_at__isnull=True).select_related(
        "deal", "deal__contact", "deal__stage"
    )
    overdue = list(open_tasks.filter(due_at__lt=now).order_by("due_at", "id"))
    today = list(
        open_tasks.filter(due_at__gte=now, due_at__lt=end_of_today).order_by("due_at", "id")
    )
    upcoming = list(
        open_tasks.filter(due_at__gte=end_of_today).order_by("due_at", "id")[:upcoming_limit]
    )
    postponed_due = list(
        Deal.objects.filter(owner=user, status=DealStatus.POSTPONED, next_contact_at__lte=now)
        .select_related("contact", "stage", "funnel")
        .order_by("next_contact_at", "id")
    )
    return MyTasks(overdue=overdue, today=today, upcoming=upcoming, postponed_due=postponed_due)
