"""The head-of-sales dashboard shows exactly ``funnel_report``'s figures, to the
people who may see them, and its small maths (z-test, what-if) is right."""

import csv
import datetime
import io
import json
import math
import re
from datetime import timedelta
from decimal import Decimal
from html.parser import HTMLParser

import openpyxl
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation

from accounts.models import Role
from analytics import services
from analytics.charts import bottleneck_sentence
from analytics.engine import funnel_report
from analytics.models import FunnelSnapshot, SnapshotStatus
from analytics.periods import snapshot_specs
from analytics.selectors import (
    SnapshotProgress,
    deal_field_values,
    snapshot_audiences,
    snapshot_progress,
    stuck_deals,
)
from analytics.services import ReportRead, reports_read, snapshots_refresh
from analytics.stats import (
    Bottleneck,
    bottlenecks,
    step_differences,
    two_proportion_z_test,
    what_if,
)
from analytics.types import FunnelQuery, Mode
from deals.bulk import DealPlan, deals_bulk_load
from deals.models import Deal
from tests import factories
from tests.story import DealStory

URL = "/dashboard/"
MARCH = {"period": "custom", "date_from": "2025-03-01", "date_to": "2025-03-31"}
MARCH_DATES = {"date_from": datetime.date(2025, 3, 1), "date_to": datetime.date(2025, 3, 31)}
UTC = datetime.UTC


# ---------------------------------------------------------------- reading the page


class _TableParser(HTMLParser):
    """The text of each cell of the table with the given id, row by row."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id = table_id
        self.inside = False
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def table(response, table_id: str) -> list[list[str]]:
    parser = _TableParser(table_id)
    parser.feed(response.content.decode())
    assert parser.rows, f"no table #{table_id}"
    return parser.rows


def charts(response) -> dict:
    match = re.search(
        r'<script id="dashboard-charts" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert match, "no chart data on the page"
    return json.loads(match.group(1))


def funnel_counts(response) -> list[int]:
    return charts(response)["funnel"]["data"][0]["x"]


def step_counts(figures) -> list[int]:
    return [step.count for step in figures.steps]


def report(funnel, **params):
    return funnel_report(FunnelQuery.build(funnel_id=funnel.pk, **{**MARCH_DATES, **params}))


# ---------------------------------------------------------------- the story


@pytest.fixture
def b2b(manager, other_manager):
    """S1 (stuck after 7 days) → S2 (target 80 %) → S3 → S4, worked by masha and petya."""
    return factories.FunnelFactory(
        name="B2B",
        members=[manager, other_manager],
        stages=[
            {"name": "S1", "rotting_days": 7},
            {"name": "S2", "target_conversion": Decimal("80")},
            "S3",
            "S4",
        ],
    )


@pytest.fixture
def story(b2b, manager, other_manager):
    """March 2025 (Moscow time):

    masha  d1 S1 → S2 → S3 → S4 → won 1000 · d2 S1 → S2 → lost (Spam) · d3 S1, open, source ads
    petya  d4 S1 → S3 → S2 → won 500 · d5 S1 → lost (Changed their mind) · d6 S1 → S2, open
    petya  d7 entered on 28 February, reached S2 then, S3 on 1 March (calendar mode only)
    """
    deals = {}
    deals["d1"] = (
        DealStory(b2b, owner=manager)
        .enters("S1", amount="1000")
        .moves_to("S2")
        .moves_to("S3")
        .moves_to("S4")
        .won()
        .deal
    )
    deals["d2"] = DealStory(b2b, owner=manager).enters("S1").moves_to("S2").lost("Spam").deal
    deals["d3"] = DealStory(b2b, owner=manager).enters("S1", title="Stuck", source="ads").deal
    deals["d4"] = (
        DealStory(b2b, owner=other_manager)
        .enters("S1", amount="500")
        .moves_to("S3")
        .moves_to("S2")
        .won()
        .deal
    )
    deals["d5"] = DealStory(b2b, owner=other_manager).enters("S1").lost("Changed their mind").deal
    deals["d6"] = DealStory(b2b, owner=other_manager).enters("S1").moves_to("S2").deal
    february = datetime.datetime(2025, 2, 28, 19, 30, tzinfo=UTC)  # 22:30 in Moscow
    deals["d7"] = (
        DealStory(b2b, owner=other_manager, start=february)
        .enters("S1")
        .moves_to("S2")
        .moves_to("S3")  # 21:30 UTC = 00:30 on 1 March in Moscow
        .deal
    )
    return deals


@pytest.fixture
def client():
    """The interface in English, whatever LANGUAGE_CODE says."""
    return Client(headers={"accept-language": "en"})


def get(client, user, **params):
    client.force_login(user)
    return client.get(URL, params)


def spy_on_reports(monkeypatch) -> list[FunnelQuery]:
    """Record every query the dashboard asks ``reports_read`` for."""
    from analytics import views

    asked = []
    real = views.reports_read

    def spy(queries, **kwargs):
        asked.extend(queries)
        return real(queries, **kwargs)

    monkeypatch.setattr(views, "reports_read", spy)
    return asked


# ---------------------------------------------------------------- the page


def test_url_name():
    assert reverse("analytics:dashboard") == URL


@pytest.mark.django_db
def test_login_required(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert "/login" in response.url


@pytest.mark.django_db
def test_head_sees_the_engine_figures_of_his_team(client, head, b2b, story):
    expected = report(b2b, filters={"owner": ["head", "masha", "petya"]}).totals
    assert step_counts(expected) == [6, 4, 2, 2, 2]

    response = get(client, head, funnel=b2b.pk, **MARCH)

    assert response.status_code == 200
    assert funnel_counts(response) == [6, 4, 2, 2, 2]
    assert charts(response)["funnel"]["data"][0]["y"] == ["S1", "S2 ▼", "S3", "S4", "Won"]
    rows = table(response, "conversion-table")
    assert rows[0][:3] == ["Step", "Count", "Step conversion, %"]
    assert [row[:4] for row in rows[1:]] == [
        ["S1", "6", "—", "100.0 %"],
        ["S2", "4", "66.7 % ▼", "66.7 %"],
        ["S3", "2", "50.0 %", "33.3 %"],
        ["S4", "2", "100.0 %", "33.3 %"],
        ["Won", "2", "100.0 %", "33.3 %"],
    ]
    # Drop-off, lost, lost by reason and open, as the engine has them.
    assert [[r[4], r[7], r[8], r[9]] for r in rows[1:]] == [
        ["—", "1", "Changed their mind: 1", "1"],
        ["2", "1", "Spam: 1", "1"],
        ["2", "0", "—", "0"],
        ["0", "0", "—", "0"],
        ["0", "0", "—", "0"],
    ]
    assert [[s.drop_off, s.lost, s.lost_by_reason, s.open] for s in expected.steps] == [
        [None, 1, {"Changed their mind": 1}, 1],
        [2, 1, {"Spam": 1}, 1],
        [2, 0, {}, 0],
        [0, 0, {}, 0],
        [0, 0, {}, 0],
    ]
    # Time in stage: d1 and d4 each left S3 after one hour; d1 spent 1 h in S4.
    assert [r[10] for r in rows[1:]] == ["1 h 0 min", "1 h 0 min", "1 h 0 min", "1 h 0 min", "—"]
    content = response.content.decode()
    assert 'data-kpi="overall">33.3 %<' in content
    assert 'data-kpi="won-amount">1,500 RUB<' in content
    assert "Below target: S2</p>" in content


@pytest.mark.django_db
def test_calendar_mode_counts_events_of_the_period_and_warns(client, head, b2b, story):
    cohort = get(client, head, funnel=b2b.pk, **MARCH)
    calendar = get(client, head, funnel=b2b.pk, mode="calendar", **MARCH)

    expected = report(b2b, mode=Mode.CALENDAR, filters={"owner": ["head", "masha", "petya"]})
    assert funnel_counts(calendar) == step_counts(expected.totals) == [6, 4, 3, 2, 2]
    assert funnel_counts(cohort) == [6, 4, 2, 2, 2]
    assert "Calendar mode mixes cohorts" in calendar.content.decode()
    assert "Calendar mode mixes cohorts" not in cohort.content.decode()


@pytest.mark.django_db
def test_filters_and_period_change_the_figures(client, head, b2b, story):
    by_source = get(client, head, funnel=b2b.pk, source="ads", **MARCH)
    by_owner = get(client, head, funnel=b2b.pk, owner="petya", **MARCH)
    april = get(
        client, head, funnel=b2b.pk, period="custom", date_from="2025-04-01", date_to="2025-04-30"
    )

    assert funnel_counts(by_source) == [1, 0, 0, 0, 0]
    assert funnel_counts(by_owner) == step_counts(report(b2b, filters={"owner": ["petya"]}).totals)
    assert funnel_counts(by_owner) == [3, 2, 1, 1, 1]
    assert funnel_counts(april) == [0, 0, 0, 0, 0]


@pytest.mark.django_db
def test_csv_export_of_the_conversion_table(client, head, b2b, story):
    response = get(client, head, funnel=b2b.pk, export="csv", **MARCH)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        'attachment; filename="funnel-b2b-2025-03-01-2025-03-31-cohort.csv"'
    )
    assert list(csv.reader(io.StringIO(response.content.decode()))) == [
        [
            "Step",
            "Count",
            "Step conversion, %",
            "From first, %",
            "Drop-off",
            "Drop-off, %",
            "Target, %",
            "Lost",
            "Lost by reason",
            "Open",
            "Median time in stage, s",
            "P90 time in stage, s",
        ],
        ["S1", "6", "", "100.0", "", "", "", "1", "Changed their mind: 1", "1", "3600", "3600"],
        ["S2", "4", "66.7", "66.7", "2", "33.3", "80.0", "1", "Spam: 1", "1", "3600", "3600"],
        ["S3", "2", "50.0", "33.3", "2", "50.0", "", "0", "", "0", "3600", "3600"],
        ["S4", "2", "100.0", "33.3", "0", "0.0", "", "0", "", "0", "3600", "3600"],
        ["Won", "2", "100.0", "33.3", "0", "0.0", "", "0", "", "0", "", ""],
    ]


@pytest.mark.django_db
def test_managers_table_and_stuck_deals(client, head, b2b, story):
    response = get(client, head, funnel=b2b.pk, **MARCH)

    rows = table(response, "managers-table")
    assert rows[0] == [
        "Manager",
        "Entered",
        "S1 → S2",
        "S2 → S3",
        "S3 → S4",
        "S4 → Won",
        "Overall",
        "Won",
        "Won amount",
    ]
    assert rows[1:] == [
        ["Masha", "3", "66.7 %", "50.0 %", "100.0 %", "100.0 %", "33.3 %", "1", "1,000 RUB"],
        ["Petya", "3", "66.7 %", "50.0 %", "100.0 %", "100.0 %", "33.3 %", "1", "500 RUB"],
    ]
    stuck = table(response, "stuck-table")
    assert [row[:3] for row in stuck[1:]] == [["Stuck", "S1", "Masha"]]
    assert f'href="/deals/{story["d3"].pk}/"' in response.content.decode()


def responds(deal, seconds: int) -> None:
    Deal.objects.filter(pk=deal.pk).update(
        first_response_at=deal.created_at + timedelta(seconds=seconds)
    )


@pytest.mark.django_db
def test_response_time_and_won_per_manager_against_the_target(
    client, head, b2b, story, monkeypatch
):
    # Target: 2 min. masha answers in 1 and 5 min (median 3 min, half in time);
    # petya in 30 s and 1.5 min (median 1 min, all in time).
    assert b2b.target_response_minutes == 2
    for name, seconds in (("d1", 60), ("d2", 300), ("d4", 30), ("d5", 90)):
        responds(story[name], seconds)
    expected = report(b2b, group_by="owner", filters={"owner": ["head", "masha", "petya"]})
    assert [(g.key, g.figures.response.median) for g in expected.groups] == [
        ("masha", 180),
        ("petya", 60),
    ]

    asked = spy_on_reports(monkeypatch)
    response = get(client, head, funnel=b2b.pk, **MARCH)

    assert table(response, "response-table") == [
        ["Manager", "Median response", "Within target, %", "Won", "Won amount"],
        ["Masha", "3 min ▼", "50.0 %", "1", "1,000 RUB"],
        ["Petya", "1 min", "100.0 %", "1", "500 RUB"],
    ]
    content = response.content.decode()
    assert "against the funnel's target of 2 min." in content
    figure = charts(response)["response"]
    assert [(trace["name"], trace["y"]) for trace in figure["data"]] == [
        ("Median response, min", [3.0, 1.0]),
        ("Target, min", [2.0, 2.0]),
    ]
    assert figure["data"][0]["marker"]["color"] == ["#D55E00", "#0072B2"]
    # Made from the by-owner report the page computes anyway: no extra report.
    assert [query.group_by for query in asked].count("owner") == 1
    assert {query.group_by for query in asked} == {"owner", None}


@pytest.mark.django_db
def test_loss_reasons_by_manager(client, head, b2b, story):
    response = get(client, head, funnel=b2b.pk, **MARCH)

    assert table(response, "loss-managers-table") == [
        ["Manager", "Changed their mind", "Spam", "Total"],
        ["Masha", "0", "1", "1"],
        ["Petya", "1", "0", "1"],
    ]


@pytest.mark.django_db
def test_loss_reasons_by_manager_without_losses(client, head, b2b, story):
    response = get(
        client, head, funnel=b2b.pk, period="custom", date_from="2025-04-01", date_to="2025-04-30"
    )

    assert 'id="loss-managers-table"' not in response.content.decode()


@pytest.mark.django_db
def test_time_in_stage_and_funnel_length(client, head, b2b, story):
    expected = report(b2b, filters={"owner": ["head", "masha", "petya"]}).totals
    # d1 won after 4 steps of an hour, d4 after 3: median 3.5 h; lost after 1 h and 2 h.
    assert (expected.length_to_won.median, expected.length_to_lost.median) == (12600, 5400)

    response = get(client, head, funnel=b2b.pk, **MARCH)

    assert table(response, "time-table") == [
        ["Stage", "Median", "P90", "Deals measured"],
        ["S1", "1 h 0 min", "1 h 0 min", "5"],
        ["S2", "1 h 0 min", "1 h 0 min", "3"],
        ["S3", "1 h 0 min", "1 h 0 min", "2"],
        ["S4", "1 h 0 min", "1 h 0 min", "1"],
        ["Funnel length to won", "3 h 30 min", "3 h 54 min", "2"],
        ["Funnel length to lost", "1 h 30 min", "1 h 54 min", "2"],
    ]
    bars = charts(response)["time"]["data"][0]
    assert bars["x"] == ["S1", "S2", "S3", "S4", "To won", "To lost"]
    assert bars["y"] == [1.0, 1.0, 1.0, 1.0, 3.5, 1.5]
    # The whisker reaches the p90: 3.9 h to won, 1.9 h to lost.
    assert bars["error_y"]["array"] == [0.0, 0.0, 0.0, 0.0, 0.4, 0.4]
    assert bars["error_y"]["arrayminus"] == [0, 0, 0, 0, 0, 0]


SLICES = ["source", "product", "region", "client_type", "temperature"]


@pytest.mark.django_db
def test_slices_are_computed_only_when_the_panel_is_opened(client, head, b2b, story, monkeypatch):
    asked = spy_on_reports(monkeypatch)
    closed = get(client, head, funnel=b2b.pk, **MARCH)
    assert not set(SLICES) & {query.group_by for query in asked}
    assert not any(key.startswith("slice-") for key in charts(closed))
    assert 'id="slices-link"' in closed.content.decode()
    assert "slices=1" in closed.content.decode()

    asked.clear()
    opened = get(client, head, funnel=b2b.pk, slices="1", **MARCH)

    assert [query.group_by for query in asked if query.group_by in SLICES] == SLICES
    content = opened.content.decode()
    assert 'id="slices-link"' not in content
    assert "<details open>" in content
    figures = charts(opened)
    assert [key for key in figures if key.startswith("slice-")] == [f"slice-{f}" for f in SLICES]
    by_source = figures["slice-source"]
    assert by_source["layout"]["title"]["text"] == "Source"
    assert by_source["layout"]["barmode"] == "group"
    assert [(trace["name"], trace["x"], trace["y"]) for trace in by_source["data"]] == [
        ("ads", ["S2", "S3", "S4", "Won"], [0.0, 0.0, 0.0, 0.0]),
        ("Not set", ["S2", "S3", "S4", "Won"], [80.0, 40.0, 40.0, 40.0]),
    ]
    expected = report(b2b, group_by="source", filters={"owner": ["head", "masha", "petya"]}).groups
    assert [
        [round(s.conversion_from_first * 100, 1) for s in g.figures.steps[1:]] for g in expected
    ] == [trace["y"] for trace in by_source["data"]]
    assert [trace["name"] for trace in figures["slice-client_type"]["data"]] == ["First sale"]


@pytest.mark.django_db
def test_slices_of_a_large_funnel_show_that_they_are_being_computed(
    client, head, b2b, story, monkeypatch
):
    from analytics import views

    real = views.reports_read

    def queued(queries, **kwargs):
        if queries[0].group_by in SLICES:
            return [ReportRead(None, None) for _query in queries]
        return real(queries, **kwargs)

    monkeypatch.setattr(views, "reports_read", queued)
    response = get(client, head, funnel=b2b.pk, slices="1", **MARCH)

    assert response.status_code == 200
    assert response.content.decode().count("being computed; reload in a moment.") == 5
    assert not any(key.startswith("slice-") for key in charts(response))


@pytest.mark.django_db
def test_xlsx_export_of_the_conversion_table(client, head, b2b, story):
    as_csv = get(client, head, funnel=b2b.pk, export="csv", **MARCH)
    response = get(client, head, funnel=b2b.pk, export="xlsx", **MARCH)

    assert response.status_code == 200
    assert response["Content-Type"] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    assert response["Content-Disposition"] == (
        'attachment; filename="funnel-b2b-2025-03-01-2025-03-31-cohort.xlsx"'
    )
    sheet = openpyxl.load_workbook(io.BytesIO(response.content)).active
    rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert rows == [
        [
            "Step",
            "Count",
            "Step conversion, %",
            "From first, %",
            "Drop-off",
            "Drop-off, %",
            "Target, %",
            "Lost",
            "Lost by reason",
            "Open",
            "Median time in stage, s",
            "P90 time in stage, s",
        ],
        ["S1", 6, None, 100.0, None, None, None, 1, "Changed their mind: 1", 1, 3600, 3600],
        ["S2", 4, 66.7, 66.7, 2, 33.3, 80.0, 1, "Spam: 1", 1, 3600, 3600],
        ["S3", 2, 50.0, 33.3, 2, 50.0, None, 0, None, 0, 3600, 3600],
        ["S4", 2, 100.0, 33.3, 0, 0.0, None, 0, None, 0, 3600, 3600],
        ["Won", 2, 100.0, 33.3, 0, 0.0, None, 0, None, 0, None, None],
    ]

    # The same columns and values as the CSV.
    def plain(value):
        if value in (None, ""):
            return ""
        try:
            return float(value)
        except ValueError:
            return value

    csv_rows = csv.reader(io.StringIO(as_csv.content.decode()))
    assert [[plain(v) for v in row] for row in rows] == [[plain(v) for v in r] for r in csv_rows]
    assert "export=xlsx" in get(client, head, funnel=b2b.pk, **MARCH).content.decode()


@pytest.mark.django_db
def test_a_manager_who_converts_differently_beyond_chance_is_marked(
    client, head, manager, other_manager, b2b
):
    # S1 → S2: masha 30 of 40, petya 10 of 40 (z = 4.47); S2 → S3: 6 of 30 against 3 of 10.
    stages = {stage.name: stage for stage in b2b.stages.all()}
    start = datetime.datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
    hour = datetime.timedelta(hours=1)

    def plans(owner, n, names):
        path = [(stages[name].pk, start + hour * i) for i, name in enumerate(names)]
        return [DealPlan(title="lead", created_at=start, path=path, owner_id=owner.pk)] * n

    deals_bulk_load(
        funnel=b2b,
        plans=plans(manager, 10, ["S1"])
        + plans(manager, 24, ["S1", "S2"])
        + plans(manager, 6, ["S1", "S2", "S3"])
        + plans(other_manager, 30, ["S1"])
        + plans(other_manager, 7, ["S1", "S2"])
        + plans(other_manager, 3, ["S1", "S2", "S3"]),
    )

    response = get(client, head, funnel=b2b.pk, **MARCH)

    rows = table(response, "managers-table")
    assert [row[:4] for row in rows[1:]] == [
        ["Masha", "40", "75.0 % ▲", "20.0 %"],
        ["Petya", "40", "25.0 % ▼", "30.0 %"],
    ]
    content = response.content.decode()
    assert 'class="outlier-high"' in content and 'class="outlier-low"' in content
    assert "75.0 % against 25.0 % for the rest of the team (p = 0.000)" in content


@pytest.mark.django_db
def test_what_if_projects_won_and_revenue(client, head, b2b, story):
    # Twice as many entering, S3 → S4 at 50 %: 12 → 8 → 4 → 2 → 2 won, average check 750.
    response = get(client, head, funnel=b2b.pk, wi_entered="12", wi_step_3="50", **MARCH)

    assert table(response, "whatif-table")[1:] == [
        ["S1", "6", "12"],
        ["S2", "4", "8"],
        ["S3", "2", "4"],
        ["S4", "2", "2"],
        ["Won", "2", "2"],
        ["Revenue", "1,500 RUB", "1,500 RUB"],
    ]


@pytest.mark.django_db
def test_a_bad_value_is_a_clear_error(client, head, b2b, story):
    bad_mode = get(client, head, funnel=b2b.pk, mode="weekly", **MARCH)
    backwards = get(
        client, head, funnel=b2b.pk, period="custom", date_from="2025-03-31", date_to="2025-03-01"
    )
    no_dates = get(client, head, funnel=b2b.pk, period="custom")
    bad_window = get(client, head, funnel=b2b.pk, window="0", **MARCH)

    assert bad_mode.status_code == 400
    assert bad_mode.context["form"].errors == {
        "mode": ["Select a valid choice. weekly is not one of the available choices."]
    }
    assert backwards.context["form"].errors == {"date_to": ["The period starts after it ends."]}
    assert no_dates.context["form"].errors == {
        "date_from": ["Enter the first day of the custom period."],
        "date_to": ["Enter the last day of the custom period."],
    }
    assert bad_window.context["form"].errors == {
        "window": ["Ensure this value is greater than or equal to 1."]
    }
    assert "dashboard-charts" not in bad_mode.content.decode()


@pytest.mark.django_db
def test_a_large_funnel_shows_the_snapshot_status(client, head, b2b, story, monkeypatch):
    monkeypatch.setattr("analytics.services.DIRECT_REPORT_MAX_DEALS", 0)

    response = get(client, head, funnel=b2b.pk, **MARCH)

    assert response.status_code == 200
    content = response.content.decode()
    assert "The report is being computed" in content
    assert "Status: Queued, 0 %." in content
    assert "dashboard-charts" not in content


@pytest.mark.django_db
def test_conversion_window(client, head, b2b, story):
    response = get(client, head, funnel=b2b.pk, window="1", **MARCH)

    expected = report(b2b, window_days=1, filters={"owner": ["head", "masha", "petya"]})
    assert funnel_counts(response) == step_counts(expected.totals)


@pytest.mark.django_db
def test_bottlenecks_against_the_previous_period_of_equal_length(client, head, b2b, story):
    # March has 31 days: the previous period is 29 January – 28 February, where d7
    # entered and went S1 → S2 → S3 (cohort mode follows it into March).
    team = {"owner": ["head", "masha", "petya"]}
    february = report(
        b2b,
        date_from=datetime.date(2025, 1, 29),
        date_to=datetime.date(2025, 2, 28),
        filters=team,
    )
    assert [s.step_conversion for s in february.totals.steps] == [None, 1.0, 1.0, 0.0, None]
    assert [s.step_conversion for s in report(b2b, filters=team).totals.steps] == [
        None,
        4 / 6,
        0.5,
        1.0,
        1.0,
    ]

    response = get(client, head, funnel=b2b.pk, **MARCH)

    assert response.context["bottlenecks"] == [
        "S2 → S3 fell from 100.0 % to 50.0 % this period",
        "S1 → S2 fell from 100.0 % to 66.7 % this period, below its target of 80.0 %",
    ]
    assert (
        '<ul id="bottlenecks"><li>S2 → S3 fell from 100.0 % to 50.0 % this period</li>'
        in response.content.decode()
    )


@pytest.mark.django_db
def test_bottlenecks_without_a_previous_period_name_the_steps_below_target(
    client, head, b2b, story
):
    # One day, 3 March, when d1 … d6 entered: nobody entered on 2 March to compare with.
    third = {"period": "custom", "date_from": "2025-03-03", "date_to": "2025-03-03"}

    response = get(client, head, funnel=b2b.pk, **third)

    assert funnel_counts(response) == [6, 4, 2, 2, 2]
    assert response.context["bottlenecks"] == ["S1 → S2 is at 66.7 %, below its target of 80.0 %"]
    empty = get(
        client, head, funnel=b2b.pk, period="custom", date_from="2025-04-01", date_to="2025-04-30"
    )
    assert empty.context["bottlenecks"] == []
    assert "No step fell against the previous period or sits below its target." in (
        empty.content.decode()
    )


# ---------------------------------------------------------------- recompute and snapshot progress


def standard_snapshot_count(funnel) -> int:
    """Distinct standard snapshots of a funnel today: the specs (this week is also the
    trend's last week) for everyone and for the head whose team works it."""
    assert [suffix for suffix, _filters in snapshot_audiences(funnel.pk)] == ["", "@head"]
    specs = snapshot_specs(timezone.localdate())
    return 2 * len({(s.period.date_from, s.period.date_to, s.mode, s.group_by) for s in specs})


@pytest.mark.django_db
def test_recompute_queues_and_computes_the_funnels_snapshots_and_goes_back(
    client, head, b2b, story, django_capture_on_commit_callbacks
):
    distinct = standard_snapshot_count(b2b)
    before = get(client, head, funnel=b2b.pk, **MARCH)
    assert f"Snapshots computed: 0 of {distinct}." in before.content.decode()
    assert f'action="/dashboard/recompute/?funnel={b2b.pk}&amp;period=custom' in (
        before.content.decode()
    )

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(
            f"/dashboard/recompute/?funnel={b2b.pk}&period=custom"
            "&date_from=2025-03-01&date_to=2025-03-31",
            {"funnel": b2b.pk},
        )

    assert response.status_code == 302
    assert response.url == (
        f"/dashboard/?funnel={b2b.pk}&period=custom&date_from=2025-03-01&date_to=2025-03-31"
    )
    # One task per distinct snapshot of the standard specs, for both audiences.
    assert 2 * len(snapshot_specs(timezone.localdate())) == 132
    snapshots = FunnelSnapshot.objects.filter(funnel=b2b)
    assert len(callbacks) == snapshots.count() == distinct
    assert set(snapshots.values_list("status", flat=True)) == {SnapshotStatus.DONE}
    page = client.get(response.url)
    content = page.content.decode()
    assert f"Snapshots queued for recomputation: {distinct} (“B2B”)." in content
    assert f"Snapshots computed: {distinct} of {distinct}." in content
    assert "snapshot-stale" not in content and "snapshot-failed" not in content


@pytest.mark.django_db
def test_recompute_without_a_query_string_goes_to_the_plain_dashboard(
    client, sales_admin, b2b, django_capture_on_commit_callbacks
):
    client.force_login(sales_admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/dashboard/recompute/", {"funnel": b2b.pk})

    assert (response.status_code, response.url) == (302, "/dashboard/")
    assert FunnelSnapshot.objects.filter(funnel=b2b).count() == standard_snapshot_count(b2b)


@pytest.mark.django_db
def test_only_heads_and_admins_may_recompute(client, manager, head, b2b, story):
    client.force_login(manager)
    assert client.post("/dashboard/recompute/", {"funnel": b2b.pk}).status_code == 403
    page = client.get(URL, {"funnel": b2b.pk, **MARCH}).content.decode()
    assert "Snapshots computed: 0 of" in page and "/dashboard/recompute/" not in page

    client.force_login(head)
    assert client.get("/dashboard/recompute/", {"funnel": b2b.pk}).status_code == 405
    assert client.post("/dashboard/recompute/", {"funnel": "x"}).status_code == 404
    kazan = factories.FunnelFactory(name="Kazan", stages=["K1"])
    assert client.post("/dashboard/recompute/", {"funnel": kazan.pk}).status_code == 404
    client.logout()
    anonymous = client.post("/dashboard/recompute/", {"funnel": b2b.pk})
    assert anonymous.status_code == 302 and "/login" in anonymous.url
    assert FunnelSnapshot.objects.count() == 0


@pytest.mark.django_db
def test_failed_and_stale_snapshots_are_noticed(
    client, head, b2b, story, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        snapshots_refresh(funnel_id=b2b.pk)
    distinct = standard_snapshot_count(b2b)
    now = timezone.now()
    snapshots = FunnelSnapshot.objects.filter(funnel=b2b)
    snapshots.filter(label="this_month:cohort").update(
        status=SnapshotStatus.FAILED, error="OperationalError: timeout"
    )
    # Current periods go stale after 30 minutes; past periods are refreshed nightly.
    snapshots.filter(label="this_quarter:calendar").update(computed_at=now - timedelta(minutes=31))
    snapshots.filter(label="this_week:calendar:owner").update(
        computed_at=now - timedelta(minutes=29)
    )
    snapshots.filter(label="last_quarter:cohort").update(computed_at=now - timedelta(days=1))

    assert snapshot_progress(funnel=b2b, now=now) == SnapshotProgress(
        total=distinct,
        done=distinct - 1,
        failed=1,
        stale=1,
        errors=["OperationalError: timeout"],
    )
    content = get(client, head, funnel=b2b.pk, **MARCH).content.decode()
    assert f"Snapshots computed: {distinct - 1} of {distinct}." in content
    assert "Failed: 1." in content
    assert (
        "Some snapshots failed; they keep their last figures until a recomputation succeeds."
        " <code>OperationalError: timeout</code>" in content
    )
    assert (
        "Snapshots that miss more than the last 30 minutes of their period: 1."
        " Recompute them." in content
    )


# ---------------------------------------------------------------- a large funnel: snapshots


@pytest.fixture
def large(monkeypatch):
    """Every period counts as too large to compute in the request, even an empty one."""
    monkeypatch.setattr("analytics.services.DIRECT_REPORT_MAX_DEALS", -1)


def no_engine_call(query):
    raise AssertionError(f"computed in the request: {query}")


@pytest.mark.django_db
def test_a_large_funnel_queues_each_report_once_then_reads_them_from_snapshots(
    client, head, b2b, story, large, monkeypatch, django_capture_on_commit_callbacks
):
    team = {"owner": ["head", "masha", "petya"]}
    expected = report(b2b, group_by="owner", filters=team)

    with django_capture_on_commit_callbacks() as queued:
        first = get(client, head, funnel=b2b.pk, **MARCH)
    # The main report, the period before it and the 12 trend weeks.
    assert len(queued) == 14
    assert "The report is being computed" in first.content.decode()
    assert "Status: Queued, 0 %." in first.content.decode()
    snapshots = FunnelSnapshot.objects.filter(funnel=b2b)
    assert snapshots.count() == 14
    assert set(snapshots.values_list("label", "status")) == {("ad hoc", SnapshotStatus.QUEUED)}
    with django_capture_on_commit_callbacks() as again:
        get(client, head, funnel=b2b.pk, **MARCH)
    assert again == []  # waiting in the queue: not sent twice

    for task in queued:  # the workers run
        task()
    assert set(snapshots.values_list("status", flat=True)) == {SnapshotStatus.DONE}
    monkeypatch.setattr("analytics.services.funnel_report", no_engine_call)

    response = get(client, head, funnel=b2b.pk, **MARCH)

    assert funnel_counts(response) == step_counts(expected.totals) == [6, 4, 2, 2, 2]
    assert [row[0] for row in table(response, "managers-table")[1:]] == ["Masha", "Petya"]
    main = snapshots.get(params__group_by="owner")
    assert response.context["computed_at"] == main.computed_at
    assert response.context["snapshot"] is None  # nothing being computed
    assert response.context["bottlenecks"] == [
        "S2 → S3 fell from 100.0 % to 50.0 % this period",
        "S1 → S2 fell from 100.0 % to 66.7 % this period, below its target of 80.0 %",
    ]
    assert response.context["trend_pending"] == 0


@pytest.mark.django_db
def test_a_stale_snapshot_shows_its_figures_while_it_is_recomputed(
    client, head, b2b, story, large, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        get(client, head, funnel=b2b.pk, **MARCH)
    # Computed on 20 March: it misses the rest of the month.
    march_20 = datetime.datetime(2025, 3, 20, tzinfo=UTC)
    for snapshot in FunnelSnapshot.objects.filter(funnel=b2b):
        snapshot.computed_at = march_20
        snapshot.result["computed_at"] = march_20.isoformat()
        snapshot.save(update_fields=["computed_at", "result"])

    with django_capture_on_commit_callbacks() as queued:
        response = get(client, head, funnel=b2b.pk, **MARCH)

    # All but the period before March: it had ended by 20 March, nothing is missing.
    assert len(queued) == 13
    assert funnel_counts(response) == [6, 4, 2, 2, 2]
    assert response.context["computed_at"] == march_20
    content = response.content.decode()
    assert "Showing the last computed figures; a new computation is Queued (0 %)." in content
    assert "12 weeks show older figures while they are recomputed." in content
    with django_capture_on_commit_callbacks() as again:
        get(client, head, funnel=b2b.pk, **MARCH)
    assert again == []


@pytest.mark.django_db
def test_a_queued_snapshot_whose_message_was_lost_is_sent_again(
    client, head, b2b, story, large, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        get(client, head, funnel=b2b.pk, **MARCH)
    hour_ago = timezone.now() - timedelta(hours=1)
    FunnelSnapshot.objects.filter(funnel=b2b).update(requested_at=hour_ago)

    with django_capture_on_commit_callbacks() as queued:
        get(client, head, funnel=b2b.pk, **MARCH)

    assert len(queued) == 14
    assert not FunnelSnapshot.objects.filter(requested_at=hour_ago).exists()


@pytest.mark.django_db
def test_a_small_funnel_computes_now_rather_than_show_a_stale_snapshot(
    client, head, b2b, story, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        reports_read([FunnelQuery.build(funnel_id=b2b.pk, **MARCH_DATES)])
    assert FunnelSnapshot.objects.count() == 0  # small: computed, nothing stored
    query = FunnelQuery.build(
        funnel_id=b2b.pk,
        group_by="owner",
        filters={"owner": ["head", "masha", "petya"]},
        **MARCH_DATES,
    )
    snapshot = services.snapshot_ensure(query=query)
    FunnelSnapshot.objects.filter(pk=snapshot.pk).update(
        status=SnapshotStatus.DONE,
        result={**report(b2b).to_dict(), "entered": 99},
        computed_at=datetime.datetime(2025, 3, 20, tzinfo=UTC),
    )

    response = get(client, head, funnel=b2b.pk, **MARCH)

    assert funnel_counts(response) == [6, 4, 2, 2, 2]
    assert response.context["snapshot"] is None
    assert response.context["computed_at"] > timezone.now() - timedelta(minutes=1)


@pytest.mark.django_db
def test_the_presets_of_a_large_funnel_come_from_the_standard_snapshots_alone(
    client,
    head,
    sales_admin,
    manager,
    b2b,
    django_capture_on_commit_callbacks,
    django_assert_num_queries,
    monkeypatch,
):
    # This month: masha's deal entered three hours ago and moved on.
    start = timezone.now() - timedelta(hours=3)
    DealStory(b2b, owner=manager, start=start).enters("S1", source="ads").moves_to("S2")
    with django_capture_on_commit_callbacks(execute=True):
        snapshots_refresh(funnel_id=b2b.pk)
    this_month = {"date_from": timezone.localdate().replace(day=1), "date_to": timezone.localdate()}
    people = {"boss": {}, "head": {"owner": ["head", "masha", "petya"]}}
    expected = {
        (username, mode): step_counts(report(b2b, mode=mode, filters=filters, **this_month).totals)
        for username, filters in people.items()
        for mode in Mode
    }
    assert set(map(tuple, expected.values())) == {(1, 1, 0, 0, 0)}
    monkeypatch.setattr("analytics.services.DIRECT_REPORT_MAX_DEALS", -1)
    monkeypatch.setattr("analytics.services.funnel_report", no_engine_call)

    for user in (sales_admin, head):
        client.force_login(user)
        for mode in Mode:
            with django_assert_num_queries(PAGE_QUERIES):
                response = client.get(URL, {"funnel": b2b.pk, "mode": mode.value})
            assert funnel_counts(response) == expected[(user.username, mode)]
            assert response.context["snapshot"] is None
            assert response.context["trend_pending"] == 0
            assert not response.context["previous_pending"]
            assert "snapshot-stale" not in response.content.decode()
    assert not FunnelSnapshot.objects.exclude(status=SnapshotStatus.DONE).exists()


# The session, the user, the owners he may pick, the funnel (for the choices, then the
# form), the filter values; the stored snapshots (one query for all 14 reports), whose
# they are (heads, and the head's people), how far they have got; the stuck deals'
# stages and deals; the funnels of the select (Django reads them twice to render it).
PAGE_QUERIES = 14


@pytest.mark.django_db
def test_snapshot_audiences_are_everyone_and_each_head_who_works_the_funnel(b2b, head):
    other_head = factories.UserFactory(username="olga", role=Role.HEAD)
    factories.TeamFactory(name="Kazan", head=other_head)  # works no funnel of b2b's
    retired = factories.UserFactory(username="ivan", role=Role.HEAD, is_active=False)
    factories.TeamFactory(name="Old", head=retired)
    b2b.members.add(factories.UserFactory(username="yura", team=retired.headed_teams.get()))

    assert snapshot_audiences(b2b.pk) == [
        ("", {}),
        ("@head", {"owner": ["head", "masha", "petya"]}),
    ]


@pytest.mark.django_db
def test_stuck_deals_are_read_in_order_and_counted_up_to_a_limit(
    b2b, manager, other_manager, django_assert_num_queries
):
    now = datetime.datetime(2025, 4, 1, tzinfo=UTC)
    for owner in (manager, other_manager, manager):
        DealStory(b2b, owner=owner).enters("S1")

    with django_assert_num_queries(2):  # stages, deals: fewer than the limit, all of them
        everything = stuck_deals(funnel=b2b, now=now, limit=5)
    with django_assert_num_queries(3):
        capped = stuck_deals(funnel=b2b, now=now, limit=1, count_limit=2)
    exact = stuck_deals(funnel=b2b, now=now, limit=1, count_limit=3)

    assert (everything.total, everything.more, everything.by_owner) == (
        3,
        False,
        {"masha": 2, "petya": 1},
    )
    assert len(capped.deals) == 1 and (capped.total, capped.more) == (2, True)
    assert (exact.total, exact.more, exact.by_stage) == (3, False, {"S1": 3})


@pytest.mark.django_db
def test_the_stuck_deals_panel_says_when_there_are_more_than_it_counted(
    client, head, b2b, story, monkeypatch
):
    DealStory(b2b, owner=story["d1"].owner).enters("S1", title="Stuck too")
    monkeypatch.setattr("analytics.views.STUCK_LIMIT", 1)
    monkeypatch.setattr("analytics.views.STUCK_COUNT_LIMIT", 1)

    response = get(client, head, funnel=b2b.pk, **MARCH)

    assert '<span class="muted" id="stuck-total">(1+)</span>' in response.content.decode()
    assert len(table(response, "stuck-table")) == 2


@pytest.mark.django_db
def test_filter_values_are_the_funnels_distinct_non_empty_values_in_order(b2b, manager):
    other = factories.FunnelFactory(name="Other", members=[manager], stages=["O1"])
    for funnel, source, region in (
        (b2b, "site", "Moscow"),
        (b2b, "ads", ""),
        (b2b, "site", "Kazan"),
        (b2b, "", "Moscow"),
        (other, "radio", "Omsk"),
    ):
        DealStory(funnel, owner=manager).enters(
            funnel.stages.first().name, source=source, region=region
        )

    assert deal_field_values(funnel=b2b) == {
        "source": ["ads", "site"],
        "product": [],
        "region": ["Kazan", "Moscow"],
    }


# ---------------------------------------------------------------- who sees what


@pytest.mark.django_db
def test_a_manager_sees_only_his_own_figures(client, manager, b2b, story):
    response = get(client, manager, funnel=b2b.pk, **MARCH)

    assert response.status_code == 200
    assert funnel_counts(response) == step_counts(report(b2b, filters={"owner": ["masha"]}).totals)
    assert funnel_counts(response) == [3, 2, 1, 1, 1]
    assert [row[0] for row in table(response, "managers-table")[1:]] == ["Masha"]
    assert response.context["form"].fields["owner"].choices == [("", "All"), ("masha", "Masha")]


@pytest.mark.django_db
def test_a_manager_cannot_ask_for_a_colleagues_figures(client, manager, b2b, story):
    response = get(client, manager, funnel=b2b.pk, owner="petya", **MARCH)

    assert response.status_code == 400
    assert "petya is not one of the available choices" in response.content.decode()
    assert "dashboard-charts" not in response.content.decode()


@pytest.mark.django_db
def test_a_manager_of_another_team_sees_none_of_them(client, outsider, b2b, story):
    b2b.members.add(outsider)
    DealStory(b2b, owner=outsider).enters("S1").moves_to("S2")

    own = get(client, outsider, funnel=b2b.pk, **MARCH)
    theirs = get(client, outsider, funnel=b2b.pk, owner="masha", **MARCH)

    assert funnel_counts(own) == [1, 1, 0, 0, 0]
    assert theirs.status_code == 400
    assert "masha is not one of the available choices" in theirs.content.decode()


@pytest.mark.django_db
def test_a_funnel_the_user_does_not_work_is_refused(client, outsider, b2b, story):
    response = get(client, outsider, funnel=b2b.pk, **MARCH)

    assert response.status_code == 400
    assert "dashboard-charts" not in response.content.decode()


@pytest.mark.django_db
def test_a_head_does_not_see_another_teams_deals_an_admin_does(
    client, head, sales_admin, outsider, b2b, story
):
    b2b.members.add(outsider)
    DealStory(b2b, owner=outsider).enters("S1")

    assert funnel_counts(get(client, head, funnel=b2b.pk, **MARCH)) == [6, 4, 2, 2, 2]
    assert funnel_counts(get(client, sales_admin, funnel=b2b.pk, **MARCH)) == [7, 4, 2, 2, 2]
    assert funnel_counts(get(client, sales_admin, funnel=b2b.pk, **MARCH)) == step_counts(
        report(b2b).totals
    )


@pytest.mark.django_db
def test_another_head_sees_nothing_of_this_team(client, b2b, story):
    other_head = factories.UserFactory(username="olga", role=Role.HEAD)
    factories.TeamFactory(name="Kazan", head=other_head)

    response = get(client, other_head, funnel=b2b.pk, **MARCH)

    assert response.status_code == 400  # the funnel is not one of his teams'


# ---------------------------------------------------------------- the maths


def test_two_proportion_z_test_by_hand():
    # 45/100 against 30/100: pooled p = 0.375, se = sqrt(0.375 * 0.625 * 0.02) = 0.068465;
    # z = 0.15 / 0.068465 = 2.1909; two-sided p = erfc(2.1909 / sqrt 2) = 0.02846.
    test = two_proportion_z_test(45, 100, 30, 100)

    assert round(test.z, 4) == 2.1909
    assert round(test.p_value, 5) == 0.02846
    assert test.significant

    # 35/100 against 30/100: pooled p = 0.325, se = 0.066238, z = 0.7549, p = 0.4503.
    close = two_proportion_z_test(35, 100, 30, 100)
    assert (round(close.z, 4), round(close.p_value, 4), close.significant) == (
        0.7549,
        0.4503,
        False,
    )
    assert two_proportion_z_test(0, 0, 3, 10) is None
    assert two_proportion_z_test(10, 10, 5, 5) is None  # no variance
    assert math.isclose(two_proportion_z_test(30, 100, 45, 100).z, -test.z)


def test_step_differences_against_the_rest_of_the_team():
    counts = {"anna": [100, 45], "boris": [60, 18], "vera": [40, 12]}

    differences = {(d.member, d.step): d for d in step_differences(counts)}

    anna = differences[("anna", 1)]
    assert (anna.own, anna.rest) == (0.45, 0.3)
    assert round(anna.test.z, 4) == 2.1909 and anna.test.significant
    assert not differences[("boris", 1)].test.significant


def test_what_if():
    counts = [1000, 710, 305, 210, 100]  # METRICS.md, seed 002

    same = what_if(counts=counts, average_check=2000.0)
    assert [round(c, 6) for c in same.counts] == [1000, 710, 305, 210, 100]
    assert round(same.revenue, 6) == 200_000

    better_offer = what_if(counts=counts, average_check=2000.0, conversions={2: 0.5})
    # 710 * 0.5 = 355 offers; then 210/305 and 100/210 as now: 355 * 100/305 = 116.39...
    assert round(better_offer.won, 2) == 116.39
    assert round(better_offer.revenue, 2) == 232_786.89

    more_leads = what_if(counts=counts, average_check=None, entered=2000)
    assert round(more_leads.won, 6) == 200
    assert more_leads.revenue == 0

    assert what_if(counts=[5, 0, 0], average_check=10, entered=10).counts == [10, 0, 0]


def test_bottlenecks_name_the_biggest_fall_first_then_the_steps_below_target():
    found = bottlenecks(
        names=["Lead", "Offer", "Invoice", "Won"],
        current=[None, 0.50, 0.41, 0.90],
        previous=[None, 0.52, 0.69, 0.80],
        targets=[None, 0.60, None, 0.95],
    )

    assert found == [
        Bottleneck(2, "Offer", "Invoice", 0.41, 0.69, None, fell=True, below_target=False),
        # A fall of 2 points is noise; below its 60 % target it is still named.
        Bottleneck(1, "Lead", "Offer", 0.50, 0.52, 0.60, fell=False, below_target=True),
        Bottleneck(3, "Invoice", "Won", 0.90, 0.80, 0.95, fell=False, below_target=True),
    ]
    assert round(found[0].fall, 9) == 0.28
    assert found[1].fall == 0.0


def test_bottlenecks_edges():
    names = ["A", "B", "C"]
    # Exactly 5 points is notable (0.69 - 0.64 is 0.04999… in floating point).
    assert [
        (b.step, b.fell)
        for b in bottlenecks(
            names=names,
            current=[None, 0.64, 0.5],
            previous=[None, 0.69, 0.549],
            targets=[None] * 3,
        )
    ] == [(1, True)]
    # No previous figures, an empty previous step, no current figure: nothing to compare.
    assert (
        bottlenecks(
            names=names,
            current=[None, None, 0.1],
            previous=[None, 0.9, None],
            targets=[None, 0.5, None],
        )
        == []
    )
    # At the target is not below it; a rise is not a fall.
    assert (
        bottlenecks(
            names=names,
            current=[None, 0.8, 0.9],
            previous=[None, 0.7, 0.9],
            targets=[None, 0.8, 0.9],
        )
        == []
    )
    assert bottlenecks(names=[], current=[], previous=[], targets=[]) == []
    with pytest.raises(ValueError, match="one value per step"):
        bottlenecks(names=names, current=[None, 0.5], previous=[None] * 3, targets=[None] * 3)


def test_bottleneck_sentences_in_english_and_russian():
    fell = Bottleneck(2, "Offer", "Invoice", 0.41, 0.69, None, fell=True, below_target=False)
    both = Bottleneck(2, "Offer", "Invoice", 0.41, 0.69, 0.5, fell=True, below_target=True)
    below = Bottleneck(1, "Lead", "Offer", 0.5, None, 0.6, fell=False, below_target=True)

    with translation.override("en"):
        assert [bottleneck_sentence(b) for b in (fell, both, below)] == [
            "Offer → Invoice fell from 69.0 % to 41.0 % this period",
            "Offer → Invoice fell from 69.0 % to 41.0 % this period, below its target of 50.0 %",
            "Lead → Offer is at 50.0 %, below its target of 60.0 %",
        ]
    with translation.override("ru"):
        assert [bottleneck_sentence(b) for b in (fell, both, below)] == [
            "Offer → Invoice: конверсия упала с 69,0 % до 41,0 % за этот период",
            "Offer → Invoice: конверсия упала с 69,0 % до 41,0 % за этот период, ниже цели 50,0 %",
            "Lead → Offer: конверсия 50,0 %, ниже цели 60,0 %",
        ]


@pytest.mark.django_db
def test_new_panels_in_russian(head, b2b, story):
    client = Client(headers={"accept-language": "ru"})
    client.force_login(head)
    response = client.get(URL, {"funnel": b2b.pk, "slices": "1", **MARCH})

    content = response.content.decode()
    for text in (
        "Менеджеры: время ответа и выигранные сделки",
        "в сравнении с целью воронки — 2 мин.",
        "Причины отказов по менеджерам",
        "Срезы",
        "Длина воронки до выигрыша",
        "XLSX",
    ):
        assert text in content, text
    assert table(response, "response-table")[0][:3] == [
        "Менеджер",
        "Медиана ответа",
        "В пределах цели, %",
    ]
    assert charts(response)["slice-source"]["layout"]["title"]["text"] == "Источник"
    assert charts(response)["time"]["data"][0]["x"][-2:] == ["До выигрыша", "До<br>проигрыша"]


@pytest.mark.django_db
def test_the_stuck_deals_follow_the_client_type_filter(client, head, b2b, story):
    first = table(get(client, head, funnel=b2b.pk, client_type="first", **MARCH), "stuck-table")
    repeat = get(client, head, funnel=b2b.pk, client_type="repeat", **MARCH)

    assert [row[:3] for row in first[1:]] == [["Stuck", "S1", "Masha"]]
    assert f'href="/deals/{story["d3"].pk}/"' not in repeat.content.decode()
