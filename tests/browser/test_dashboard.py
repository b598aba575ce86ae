"""The dashboard in a real browser: the head's figures equal the engine's, calendar mode
warns, the CSV downloads, a filter narrows the figures as the engine does, the what-if
projects from the current figures, and a manager sees only his own deals."""

import csv
import datetime
import io
from decimal import Decimal
from fractions import Fraction

import pytest

from analytics.engine import funnel_report
from analytics.types import FunnelQuery, Mode
from tests.browser.conftest import log_in
from tests.factories import FunnelFactory
from tests.story import DealStory

pytestmark = pytest.mark.django_db(transaction=True)

MARCH = {"date_from": datetime.date(2025, 3, 1), "date_to": datetime.date(2025, 3, 31)}


@pytest.fixture
def expect():
    return pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def b2b(manager, other_manager):
    funnel = FunnelFactory(
        name="B2B",
        members=[manager, other_manager],
        stages=["S1", {"name": "S2", "target_conversion": Decimal("80")}, "S3"],
    )
    # March 2025: masha S1 → S2 → S3 → won, S1 → S2 → lost; petya S1 → S2, S1.
    DealStory(funnel, owner=manager).enters("S1", amount="1000").moves_to("S2").moves_to("S3").won()
    DealStory(funnel, owner=manager).enters("S1").moves_to("S2").lost("Spam")
    DealStory(funnel, owner=other_manager).enters("S1").moves_to("S2")
    DealStory(funnel, owner=other_manager).enters("S1")
    return funnel


def engine_counts(funnel, owners, mode=Mode.COHORT) -> list[int]:
    query = FunnelQuery.build(funnel_id=funnel.pk, mode=mode, filters={"owner": owners}, **MARCH)
    return [step.count for step in funnel_report(query).totals.steps]


def show_march(page, funnel) -> None:
    page.goto(f"/dashboard/?funnel={funnel.pk}")
    page.select_option("#dashboard-controls select[name=period]", "custom")
    page.fill("#dashboard-controls input[name=date_from]", "2025-03-01")
    page.fill("#dashboard-controls input[name=date_to]", "2025-03-31")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**date_from=2025-03-01**")


def table_counts(page) -> list[int]:
    cells = page.locator("#conversion-table tbody tr td:nth-child(2)").all_inner_texts()
    return [int(text.replace(",", "")) for text in cells]


def chart_counts(page) -> list[int]:
    chart = page.locator("#chart-funnel")
    page.wait_for_function("document.getElementById('chart-funnel').data !== undefined")
    return chart.evaluate("element => element.data[0].x")


def test_a_head_sees_the_engine_figures_switches_to_calendar_and_exports_csv(
    page, expect, head, b2b
):
    team = ["head", "masha", "petya"]
    assert engine_counts(b2b, team) == [4, 3, 1, 1]
    log_in(page, head)

    show_march(page, b2b)

    expect(page.locator("#conversion-table")).to_be_visible()
    assert table_counts(page) == engine_counts(b2b, team)
    assert chart_counts(page) == engine_counts(b2b, team)
    expect(page.locator("#bottlenecks")).to_have_text(
        "S1 → S2 is at 75.0 %, below its target of 80.0 %"
    )
    expect(page.locator(".calendar-warning")).to_have_count(0)

    page.select_option("#dashboard-controls select[name=mode]", "calendar")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**mode=calendar**")

    expect(page.locator(".calendar-warning")).to_contain_text("Calendar mode mixes cohorts")
    assert table_counts(page) == engine_counts(b2b, team, Mode.CALENDAR)

    link = page.locator(".panel-table a[download][href*='export=csv']")
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == "funnel-b2b-2025-03-01-2025-03-31-calendar.csv"
    with open(download.path(), encoding="utf-8") as handle:
        rows = list(csv.reader(io.StringIO(handle.read())))
    assert rows[0][:4] == ["Step", "Count", "Step conversion, %", "From first, %"]
    assert rows[1][:4] == ["S1", "4", "", "100.0"]
    assert rows[2][:4] == ["S2", "3", "75.0", "75.0"]


def test_a_manager_sees_only_his_own_figures(page, expect, manager, b2b):
    assert engine_counts(b2b, ["masha"]) == [2, 2, 1, 1]
    log_in(page, manager)

    show_march(page, b2b)

    expect(page.locator("#conversion-table")).to_be_visible()
    assert table_counts(page) == engine_counts(b2b, ["masha"])
    assert chart_counts(page) == [2, 2, 1, 1]
    expect(page.locator("#managers-table tbody tr")).to_have_count(1)
    expect(page.locator("#managers-table tbody tr > :first-child")).to_have_text("Masha")
    options = page.locator("#dashboard-controls select[name=owner] option").all_inner_texts()
    assert options == ["All", "Masha"]
    expect(page.get_by_role("button", name="Recompute")).to_have_count(0)


def test_a_head_runs_the_what_if_then_filters_by_manager(page, expect, head, b2b):
    team = ["head", "masha", "petya"]
    totals = funnel_report(
        FunnelQuery.build(funnel_id=b2b.pk, filters={"owner": team}, **MARCH)
    ).totals
    counts = [step.count for step in totals.steps]
    assert counts == [4, 3, 1, 1] and totals.won.amount == 1000
    log_in(page, head)
    show_march(page, b2b)

    # Twice as many entering and S2 → S3 at 50 %: the other steps keep today's conversion,
    # the average check stays.
    page.fill("#whatif-form input[name=wi_entered]", "8")
    page.fill("#whatif-form input[name=wi_step_2]", "50")
    page.get_by_role("button", name="Project").click()
    page.wait_for_url("**wi_entered=8**")

    won = Fraction(8) * Fraction(counts[1], counts[0]) * Fraction(1, 2)
    won *= Fraction(counts[3], counts[2])
    revenue = won * Fraction(totals.won.amount) / totals.won.count
    assert (won, revenue) == (3, 3000)
    expect(page.locator("#whatif-table tbody tr")).to_have_count(5)
    projected = page.locator("#whatif-table tbody tr > :nth-child(3)").all_inner_texts()
    assert projected == ["8", "6", "3", "3", "3,000 RUB"]
    assert projected[-2:] == [str(won), f"{int(revenue):,} RUB"]
    now = page.locator("#whatif-table tbody tr > :nth-child(2)").all_inner_texts()
    assert now == ["4", "3", "1", "1", "1,000 RUB"]
    # The scenario keeps the period and the funnel it was made for.
    assert table_counts(page) == counts

    page.select_option("#dashboard-controls select[name=owner]", "petya")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**owner=petya**")

    expect(page.locator("#managers-table tbody tr > :first-child")).to_have_text("Petya")
    assert table_counts(page) == engine_counts(b2b, ["petya"]) == [2, 1, 0, 0]
    assert chart_counts(page) == [2, 1, 0, 0]
