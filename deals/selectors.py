"""Reads of deals: who sees what, and the history of one deal."""

from django.db.models import Q, QuerySet

from accounts.models import Team, User
from deals.models import Deal, Note, StageChange, StatusChange, Task
from funnels.models import Funnel


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
