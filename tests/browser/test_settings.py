"""Funnel settings in a real browser: reorder stages without a mouse, screenshot."""

from pathlib import Path

import pytest

from funnels.services import custom_field_add, stage_update
from tests.browser.conftest import log_in
from tests.factories import FunnelFactory

pytestmark = pytest.mark.django_db(transaction=True)

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def test_a_head_reorders_stages_and_the_page_is_screenshotted(page, head, manager):
    expect = pytest.importorskip("playwright.sync_api").expect
    funnel = FunnelFactory(
        name="B2B",
        members=[manager],
        stages=[
            {"name": "New request", "probability": 5, "tasks": [("Call the lead", 15)]},
            {"name": "Qualified", "probability": 20, "required_fields": ["amount"]},
            {"name": "Offer sent", "probability": 40, "rotting_days": 7},
            {"name": "Contract signed", "probability": 80},
        ],
    )
    custom_field_add(actor=None, funnel=funnel, key="budget", label="Budget", type="number")
    stage_update(actor=None, stage=funnel.stages.get(name="Offer sent"), required_fields=["budget"])
    log_in(page, head)
    page.goto(f"/funnels/{funnel.pk}/")

    page.get_by_role("button", name="Move Qualified down").click()
    page.get_by_role("button", name="Save the order").click()

    expect(page.locator(".messages")).to_contain_text("The stages are reordered.")
    assert list(funnel.stages.order_by("position").values_list("name", flat=True)) == [
        "New request",
        "Offer sent",
        "Qualified",
        "Contract signed",
    ]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "settings.png"), full_page=True)
