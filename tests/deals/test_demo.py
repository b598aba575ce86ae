"""The demo generator: its plan is a pure function of the seed, and the command
writes exactly that plan through the services, with consistent history."""

from collections import Counter
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Count, Q
from django.utils import timezone

from accounts.models import Role, Team, User
from deals import demo
from deals.models import Deal, DealStatus, StageChange, StatusChange
from funnels.models import OTHER_LOSS_REASON, Funnel

DEALS, SEED = 200, 7


def run_demo(*args: str) -> str:
    out = StringIO()
    call_command("demo", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def demo_data(db) -> str:
    return run_demo("--deals", str(DEALS), "--seed", str(SEED))


# ---------------------------------------------------------------- the plan (no database)


def test_the_plan_is_a_pure_function_of_the_seed():
    first = demo.plan_deals(seed=SEED, count=DEALS)

    assert first == demo.plan_deals(seed=SEED, count=DEALS)
    assert first != demo.plan_deals(seed=SEED + 1, count=DEALS)
    assert len(first) == DEALS


def test_planned_steps_move_forward_in_time_and_stay_in_the_past():
    for plan in demo.plan_deals(seed=SEED, count=1000):
        times = [step.at for step in plan.steps]
        assert times == sorted(set(times)), plan.number
        assert all(0 < at <= plan.age - demo.MINUTE for at in times), plan.number
        if plan.status == demo.POSTPONED:
            assert plan.steps[-1].kind == demo.POSTPONE_STEP
            assert plan.steps[-1].next_contact > plan.age  # ahead of now


def test_the_plan_has_every_kind_of_deal():
    plans = demo.plan_deals(seed=SEED, count=DEALS)
    kinds = Counter(step.kind for plan in plans for step in plan.steps)

    assert {plan.status for plan in plans} == {"open", "postponed", "won", "lost"}
    assert {plan.funnel for plan in plans} == {"b2b", "b2c"}
    assert any(plan.repeat for plan in plans)
    for kind in (demo.MOVE, demo.WIN, demo.LOSE_STEP, demo.POSTPONE_STEP, demo.NOTE):
        assert kinds[kind] > 0, kind


# ---------------------------------------------------------------- the command


def test_demo_users_teams_and_passwords(demo_data):
    users = {user.username: user for user in User.objects.select_related("team")}

    assert set(users) == {person.username for person in demo.PEOPLE}
    admin, head, head2 = users["admin"], users["head"], users["head2"]
    assert (admin.role, admin.is_staff, admin.is_superuser) == (Role.ADMIN, True, True)
    assert (head.role, head.is_staff, head.is_superuser) == (Role.HEAD, False, False)
    assert (head2.role, head2.is_staff) == (Role.HEAD, False)
    assert users["manager"].role == Role.MANAGER
    assert not users["manager"].is_staff
    assert {team.name: team.head.username for team in Team.objects.all()} == {
        demo.TEAMS[0]: "head",
        demo.TEAMS[1]: "head2",
    }
    assert users["manager"].team.head == head
    for username in ("admin", "head", "manager"):
        assert users[username].check_password("demo"), username
    # Hashed once: every demo user carries the very same salted hash.
    assert len({user.password for user in users.values()}) == 1


def test_demo_funnels_stages_and_members(demo_data):
    funnels = {funnel.name: funnel for funnel in Funnel.objects.all()}

    assert set(funnels) == {demo.B2B.name, demo.B2C.name}
    for spec in demo.FUNNELS:
        funnel = funnels[spec.name]
        stages = list(funnel.stages.order_by("position"))
        assert [stage.name for stage in stages] == spec.stage_names()
        probabilities = [stage.probability for stage in stages]
        assert probabilities == sorted(probabilities)
        assert set(funnel.members.values_list("username", flat=True)) == set(spec.members)
    b2b = {stage.name: stage for stage in funnels[demo.B2B.name].stages.all()}
    assert b2b["Новая заявка"].task_templates.get().title == "Связаться с клиентом"
    assert b2b["Новая заявка"].task_templates.get().due_in_minutes == 2
    assert "contact_phone" in b2b["Квалификация пройдена"].required_fields
    assert "contract_number" in b2b["Условия согласованы / договор подписан"].required_fields


def test_demo_history_is_consistent(demo_data):
    deals = Deal.objects.all()
    now = timezone.now()

    assert deals.count() == DEALS
    assert set(deals.values_list("status", flat=True)) == set(DealStatus.values)
    # Every deal starts with exactly one creation change, first in its history.
    per_deal = deals.annotate(
        changes=Count("stage_changes"),
        creations=Count("stage_changes", filter=Q(stage_changes__from_stage__isnull=True)),
    )
    assert all(deal.changes >= 1 and deal.creations == 1 for deal in per_deal)
    history: dict[int, list] = {}
    for change in StageChange.objects.order_by("deal_id", "id"):
        history.setdefault(change.deal_id, []).append(change)
    assert all(changes[0].from_stage_id is None for changes in history.values())
    # Time only moves forward, and never past now.
    for model in (StageChange, StatusChange):
        times: dict[int, list] = {}
        for deal_id, at in model.objects.order_by("deal_id", "id").values_list("deal_id", "at"):
            times.setdefault(deal_id, []).append(at)
        for deal_times in times.values():
            assert deal_times == sorted(deal_times)
            assert deal_times[-1] <= now
    lost = deals.filter(status=DealStatus.LOST).select_related("loss_reason")
    assert lost.exists()
    assert all(deal.loss_reason is not None for deal in lost)
    assert all(
        deal.loss_comment for deal in lost if deal.loss_reason.name == str(OTHER_LOSS_REASON)
    )
    postponed = deals.filter(status=DealStatus.POSTPONED)
    assert postponed.exists()
    assert all(deal.next_contact_at > now for deal in postponed)


def test_demo_writes_exactly_the_plan(demo_data):
    written = Counter(Deal.objects.values_list("funnel__name", "stage__name", "status").order_by())

    assert written == demo.plan_summary(demo.plan_deals(seed=SEED, count=DEALS))
    assert "Done: 200 deals" in demo_data


def test_if_empty_skips_a_database_with_deals(demo_data):
    out = run_demo("--deals", "50", "--if-empty")

    assert "Demo data is already there (200 deals)" in out
    assert Deal.objects.count() == DEALS


def test_a_second_run_without_if_empty_is_refused_and_writes_nothing(demo_data):
    contacts = Deal.objects.values("contact").distinct().count()

    with pytest.raises(CommandError, match="already exists"):
        run_demo("--deals", "10")

    assert Deal.objects.count() == DEALS
    assert Deal.objects.values("contact").distinct().count() == contacts
    assert Funnel.objects.count() == 2


@pytest.mark.django_db
def test_demo_logins_lists_the_users_and_the_address():
    out = StringIO()
    call_command("demo_logins", stdout=out)
    assert "run `manage.py demo` first" in out.getvalue()

    run_demo("--deals", "0")
    out = StringIO()
    call_command("demo_logins", stdout=out)

    text = out.getvalue()
    assert "http://127.0.0.1:8000/" in text
    for person in demo.PEOPLE:
        assert person.username in text
    assert demo.TEAMS[0] in text
    assert "demo" in text


def test_funnel_report_on_the_demo_data_is_a_plausible_funnel_in_both_modes(demo_data):
    import json

    funnel = Funnel.objects.order_by("pk").first()
    today = timezone.localdate()
    args = [
        "funnel_report",
        "--funnel",
        funnel.name,
        "--from",
        str(today.replace(year=today.year - 1)),
        "--to",
        str(today),
    ]
    reports = {}
    for mode in ("cohort", "calendar"):
        out = StringIO()
        call_command(*args, "--mode", mode, stdout=out)
        reports[mode] = json.loads(out.getvalue())

    cohort = [step["count"] for step in reports["cohort"]["steps"]]
    assert cohort[0] == Deal.objects.filter(funnel=funnel).count()
    assert cohort == sorted(cohort, reverse=True)  # monotone: nobody skips the count of a step
    assert cohort[-1] == Deal.objects.filter(funnel=funnel, status=DealStatus.WON).count()
    assert 0 < reports["cohort"]["overall_conversion"] < 1
    assert sum(reports["cohort"]["steps"][i]["lost"] for i in range(len(cohort))) == (
        Deal.objects.filter(funnel=funnel, status=DealStatus.LOST).count()
    )
    # Six months of history all fall into the last year: both modes see the same entries and wins.
    calendar = [step["count"] for step in reports["calendar"]["steps"]]
    assert (calendar[0], calendar[-1]) == (cohort[0], cohort[-1])
