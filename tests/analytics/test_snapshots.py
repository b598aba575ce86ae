"""Snapshots: the standard set, idempotent computing, and a failed run keeps the old figures."""

import datetime
import json

import pytest
from django.core.management import call_command
from django.utils import timezone

from analytics import services
from analytics.models import FunnelSnapshot, SnapshotStatus
from analytics.periods import snapshot_specs, standard_periods, trend_weeks
from analytics.tasks import compute_snapshot, refresh_snapshots
from analytics.types import FunnelQuery
from funnels.services import funnel_create
from tests.story import DealStory


@pytest.fixture
def four(db):
    return funnel_create(actor=None, name="Four", stages=["S1", "S2", "S3", "S4"])


def test_standard_periods_on_a_wednesday_in_the_middle_of_a_quarter():
    today = datetime.date(2026, 11, 18)
    periods = {p.name: (p.date_from, p.date_to, p.current) for p in standard_periods(today)}
    d = datetime.date
    assert periods == {
        "this_week": (d(2026, 11, 16), d(2026, 11, 18), True),
        "last_week": (d(2026, 11, 9), d(2026, 11, 15), False),
        "this_month": (d(2026, 11, 1), d(2026, 11, 18), True),
        "last_month": (d(2026, 10, 1), d(2026, 10, 31), False),
        "this_quarter": (d(2026, 10, 1), d(2026, 11, 18), True),
        "last_quarter": (d(2026, 7, 1), d(2026, 9, 30), False),
    }
    weeks = trend_weeks(today)
    assert len(weeks) == 12
    assert (weeks[0].date_from, weeks[0].date_to) == (d(2026, 8, 31), d(2026, 9, 6))
    assert (weeks[-1].date_from, weeks[-1].date_to, weeks[-1].current) == (
        d(2026, 11, 16),
        d(2026, 11, 18),
        True,
    )
    # Six standard periods and the last 12 weeks, in both modes, overall, by manager and
    # the period of equal length before (overall); and the 12 trend weeks in both modes.
    specs = snapshot_specs(today)
    assert len(specs) == 7 * 2 * 3 + 12 * 2
    dates = {s.label: (s.period.date_from, s.period.date_to) for s in specs}
    assert dates["last_12_weeks:cohort:owner"] == (d(2026, 8, 31), d(2026, 11, 18))
    assert dates["this_month:previous:cohort"] == (d(2026, 10, 14), d(2026, 10, 31))
    assert dates["this_week:previous:calendar"] == (d(2026, 11, 13), d(2026, 11, 15))
    assert dates["last_week:previous:cohort"] == dates["week:2026-11-02:cohort"]
    # 80 days (11 weeks and 3 days), and the 80 days before.
    assert dates["last_12_weeks:previous:cohort"] == (d(2026, 6, 12), d(2026, 8, 30))
    # The periods before are past: refreshed nightly, or when they have no figures yet.
    assert len(snapshot_specs(today, current_only=True)) == 4 * 2 * 2 + 2


@pytest.mark.django_db
def test_refresh_computes_every_standard_snapshot_of_active_funnels(
    four, django_capture_on_commit_callbacks
):
    funnel_create(actor=None, name="Archived", stages=["A"]).__class__.objects.filter(
        name="Archived"
    ).update(is_active=False)
    today = timezone.localdate()
    week_start = timezone.make_aware(
        datetime.datetime.combine(today - datetime.timedelta(days=today.weekday()), datetime.time())
    )
    # Entered this week whatever the hour the suite runs at.
    start = max(timezone.now() - datetime.timedelta(hours=2), week_start)
    DealStory(four, start=start).enters("S1").moves_to("S2")

    with django_capture_on_commit_callbacks(execute=True):
        queued = refresh_snapshots.delay().get()

    # 66 standard specs (nobody heads a team that works the funnel); a few share
    # parameters (this week is also the trend's last week).
    distinct = len(
        {(s.period.date_from, s.period.date_to, s.mode, s.group_by) for s in snapshot_specs(today)}
    )
    assert len(snapshot_specs(today)) == 66
    assert queued == distinct  # each shared row is computed once
    snapshots = FunnelSnapshot.objects.filter(funnel=four)
    assert snapshots.count() == distinct
    assert set(snapshots.values_list("status", flat=True)) == {SnapshotStatus.DONE}
    this_week = snapshots.get(label="this_week:cohort")
    assert [s["count"] for s in this_week.result["steps"]] == [1, 1, 0, 0, 0]
    assert this_week.progress == 100 and this_week.computed_at is not None
    # Running again updates the same rows: idempotent.
    with django_capture_on_commit_callbacks(execute=True):
        assert refresh_snapshots.delay().get() == distinct
    assert FunnelSnapshot.objects.count() == distinct


@pytest.mark.django_db
def test_the_quarter_hourly_refresh_takes_the_current_periods_and_any_without_figures(
    four, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        refresh_snapshots.delay().get()
    today = timezone.localdate()
    current = {
        services.snapshot_key(query)
        for _label, query in services.standard_snapshot_queries(
            funnel_id=four.pk, today=today, current_only=True
        )
    }
    # A period that moved with the date (here: last month's figures were never computed).
    FunnelSnapshot.objects.filter(label="last_month:cohort").update(result=None)
    missing = FunnelSnapshot.objects.get(label="last_month:cohort")

    with django_capture_on_commit_callbacks(execute=True):
        queued = services.snapshots_refresh(funnel_id=four.pk, current_only=True)

    keys = set(FunnelSnapshot.objects.filter(pk__in=queued).values_list("key", flat=True))
    assert keys == current | {missing.key}
    missing.refresh_from_db()
    assert missing.status == SnapshotStatus.DONE and missing.result is not None


@pytest.mark.django_db
def test_a_failed_run_leaves_the_previous_figures_in_place(four, monkeypatch):
    DealStory(four).enters("S1")
    query = FunnelQuery(
        funnel_id=four.pk, date_from=datetime.date(2025, 3, 1), date_to=datetime.date(2025, 3, 31)
    )
    snapshot = services.snapshot_ensure(query=query, label="march")
    compute_snapshot.delay(snapshot.pk).get()
    snapshot.refresh_from_db()
    good_result, good_at = snapshot.result, snapshot.computed_at

    def broken(query):
        raise RuntimeError("database went away")

    monkeypatch.setattr(services, "funnel_report", broken)
    with pytest.raises(RuntimeError):
        compute_snapshot.delay(snapshot.pk).get()

    snapshot.refresh_from_db()
    assert snapshot.status == SnapshotStatus.FAILED
    assert snapshot.error == "RuntimeError: database went away"
    assert (snapshot.result, snapshot.computed_at) == (good_result, good_at)
    assert [s["count"] for s in good_result["steps"]] == [1, 0, 0, 0, 0]


@pytest.mark.django_db
def test_compute_tolerates_a_deleted_snapshot():
    assert compute_snapshot.delay(987654).get() == "gone"


@pytest.mark.django_db
def test_funnel_report_command_prints_the_engine_result_as_json(four, capsys):
    DealStory(four).enters("S1").moves_to("S3").moves_to("S2").won()
    DealStory(four).enters("S1").lost("Spam")

    call_command("funnel_report", "--funnel", "Four", "--from", "2025-03-01", "--to", "2025-03-31")
    data = json.loads(capsys.readouterr().out)

    assert [(s["name"], s["count"]) for s in data["steps"]] == [
        ("S1", 2),
        ("S2", 1),
        ("S3", 1),
        ("S4", 1),
        ("Won", 1),
    ]
    assert [s["step_conversion"] for s in data["steps"]] == [None, 0.5, 1.0, 1.0, 1.0]
    assert [s["conversion_from_first"] for s in data["steps"]] == [1.0, 0.5, 0.5, 0.5, 0.5]
    assert data["overall_conversion"] == 0.5
    assert data["steps"][1]["time_in_stage"] == {
        "count": 1,
        "mean": 3600.0,
        "median": 3600.0,
        "p90": 3600.0,
    }
    assert data["groups"] == []


@pytest.mark.django_db
def test_funnel_report_command_groups_by_owner_with_username_keys_and_full_name_labels(
    four, capsys, django_user_model
):
    masha = django_user_model.objects.create(
        username="masha", first_name="Masha", last_name="Ivanova"
    )
    DealStory(four, owner=masha).enters("S1").moves_to("S2")
    DealStory(four).enters("S1")

    call_command(
        "funnel_report",
        "--funnel",
        "Four",
        "--from",
        "2025-03-01",
        "--to",
        "2025-03-31",
        "--group-by",
        "owner",
        "--mode",
        "calendar",
    )
    data = json.loads(capsys.readouterr().out)

    assert [(g["key"], g["label"], [s["count"] for s in g["steps"]]) for g in data["groups"]] == [
        ("masha", "Masha Ivanova", [1, 1, 0, 0, 0]),
        ("", "Unassigned", [1, 0, 0, 0, 0]),
    ]
    assert [s["count"] for s in data["steps"]] == [2, 1, 0, 0, 0]


@pytest.mark.django_db
def test_funnel_report_command_table_and_csv_and_errors(four, capsys):
    from django.core.management.base import CommandError

    DealStory(four).enters("S1")
    args = ["funnel_report", "--funnel", "Four", "--from", "2025-03-01", "--to", "2025-03-31"]
    call_command(*args, "--format", "table")
    assert "S1" in capsys.readouterr().out
    call_command(*args, "--format", "csv")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("group,step,count")
    assert lines[1].startswith(",S1,1,")
    with pytest.raises(CommandError, match=r"No funnel named “Nope”\. Funnels: Four\."):
        call_command("funnel_report", "--funnel", "Nope")
    with pytest.raises(CommandError, match="write filters as FIELD=VALUE"):
        call_command(*args, "--filter", "owner")
    with pytest.raises(CommandError, match="The period starts after it ends"):
        call_command(
            "funnel_report", "--funnel", "Four", "--from", "2025-04-01", "--to", "2025-03-01"
        )


@pytest.mark.django_db
def test_admin_lists_snapshots_and_summaries_read_only(four, admin_client):
    DealStory(four).enters("S1").moves_to("S2")
    query = FunnelQuery(
        funnel_id=four.pk, date_from=datetime.date(2025, 3, 1), date_to=datetime.date(2025, 3, 31)
    )
    snapshot = services.snapshot_ensure(query=query, label="march")
    for url in (
        "/admin/analytics/funnelsnapshot/",
        f"/admin/analytics/funnelsnapshot/{snapshot.pk}/change/",
        "/admin/analytics/stagereach/",
        "/admin/analytics/stagetime/",
    ):
        assert admin_client.get(url).status_code == 200, url
    assert admin_client.get("/admin/analytics/stagetime/add/").status_code == 403
