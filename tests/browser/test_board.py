"""The board in a real browser: log in, drag cards, fill the dialogs, switch language."""

import datetime
from pathlib import Path

import pytest
from django.utils import timezone

from deals.models import Deal, DealStatus, StageChange
from deals.services import deal_create, deal_update, note_add, task_create
from funnels.services import stage_update
from tests.browser.conftest import drag, log_in
from tests.factories import FunnelFactory

pytestmark = pytest.mark.django_db(transaction=True)

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture
def expect():
    return pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def b2b(manager, other_manager):
    """S2 needs an amount."""
    return FunnelFactory(
        name="B2B",
        members=[manager, other_manager],
        stages=["S1", {"name": "S2", "required_fields": ["amount"]}, "S3", "S4"],
    )


def stage_of(funnel, name):
    return funnel.stages.get(name=name)


def card(page, deal):
    return page.locator(f'.deal-card[data-deal-id="{deal.pk}"]')


def column(page, stage):
    return page.locator(f'.cards[data-stage-id="{stage.pk}"]')


def test_drag_to_the_next_stage_is_saved_in_the_history(page, expect, manager, b2b):
    deal = deal_create(actor=None, funnel=b2b, title="Pipes", owner=manager, values={"amount": "5"})
    log_in(page, manager)

    drag(page, card(page, deal), column(page, stage_of(b2b, "S2")))

    moved = column(page, stage_of(b2b, "S2")).locator(
        f'[data-deal-id="{deal.pk}"][data-version="2"]'
    )
    expect(moved).to_be_visible()
    expect(
        page.locator(f'.column[data-stage-id="{stage_of(b2b, "S2").pk}"] .column-count')
    ).to_have_text("1")
    expect(
        page.locator(f'.column[data-stage-id="{stage_of(b2b, "S1").pk}"] .column-count')
    ).to_have_text("0")
    change = StageChange.objects.filter(deal=deal).latest("id")
    assert (change.from_stage.name, change.to_stage.name, change.actor) == ("S1", "S2", manager)


def test_a_required_field_is_asked_in_the_dialog_and_cancel_snaps_back(page, expect, manager, b2b):
    deal = deal_create(actor=None, funnel=b2b, title="Pipes", owner=manager)
    log_in(page, manager)
    s1, s2 = stage_of(b2b, "S1"), stage_of(b2b, "S2")

    drag(page, card(page, deal), column(page, s2))
    dialog = page.locator("#deal-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("To move to “S2”, fill in: Amount.")
    expect(dialog.locator("input:not([type=hidden])")).to_have_count(1)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(column(page, s1).locator(f'[data-deal-id="{deal.pk}"]')).to_be_visible()
    assert Deal.objects.get(pk=deal.pk).stage == s1

    drag(page, card(page, deal), column(page, s2))
    dialog.locator("input[name=amount]").fill("1500")
    dialog.get_by_role("button", name="Move").click()

    expect(dialog).to_be_hidden()
    expect(column(page, s2).locator(f'[data-deal-id="{deal.pk}"]')).to_contain_text("1,500")
    deal.refresh_from_db()
    assert (deal.stage, str(deal.amount)) == (s2, "1500.00")


def test_lost_without_a_reason_is_refused_then_with_a_reason_succeeds(page, expect, manager, b2b):
    deal = deal_create(actor=None, funnel=b2b, title="Pipes", owner=manager)
    log_in(page, manager)

    drag(page, card(page, deal), page.locator(".dropzone.lost"))
    dialog = page.locator("#deal-dialog")
    expect(dialog.locator("select[name=loss_reason]")).to_be_visible()
    dialog.get_by_role("button", name="Lose").click()
    expect(dialog).to_contain_text("A deal is closed as lost only with its reason: choose one.")
    assert Deal.objects.get(pk=deal.pk).status == DealStatus.OPEN

    dialog.locator("select[name=loss_reason]").select_option(label="Other")
    dialog.get_by_role("button", name="Lose").click()
    expect(dialog).to_contain_text("The reason “Other” needs a comment: say what happened.")
    dialog.locator("textarea[name=loss_comment]").fill("Went bankrupt")
    dialog.get_by_role("button", name="Lose").click()

    expect(dialog).to_be_hidden()
    expect(card(page, deal)).to_have_count(0)
    deal.refresh_from_db()
    assert (deal.status, deal.loss_reason.name, deal.loss_comment) == (
        DealStatus.LOST,
        "Other",
        "Went bankrupt",
    )


def test_postpone_with_a_date(page, expect, manager, b2b):
    deal = deal_create(actor=None, funnel=b2b, title="Pipes", owner=manager)
    when = timezone.localtime() + datetime.timedelta(days=2)
    log_in(page, manager)

    drag(page, card(page, deal), page.locator(".dropzone.postponed"))
    dialog = page.locator("#deal-dialog")
    dialog.get_by_role("button", name="Postpone").click()
    expect(dialog).to_contain_text("A postponed deal needs the date of the next contact.")
    dialog.locator("input[name=next_contact_at]").fill(when.strftime("%Y-%m-%dT%H:%M"))
    dialog.get_by_role("button", name="Postpone").click()

    expect(dialog).to_be_hidden()
    expect(card(page, deal)).to_have_count(0)
    deal.refresh_from_db()
    assert (deal.status, deal.next_contact_at) == (
        DealStatus.POSTPONED,
        when.replace(second=0, microsecond=0),
    )


def test_a_concurrent_change_is_reported_and_the_card_reloaded(page, expect, manager, b2b):
    deal = deal_create(actor=None, funnel=b2b, title="Pipes", owner=manager)
    log_in(page, manager)
    deal_update(actor=None, deal=deal, values={"title": "Pipes, renamed elsewhere"})

    drag(page, card(page, deal), column(page, stage_of(b2b, "S3")))
    dialog = page.locator("#deal-dialog")
    expect(dialog).to_contain_text("Someone changed this deal while you were looking at it.")
    dialog.get_by_role("button", name="Close").click()

    reloaded = column(page, stage_of(b2b, "S1")).locator(
        f'[data-deal-id="{deal.pk}"][data-version="2"]'
    )
    expect(reloaded).to_contain_text("Pipes, renamed elsewhere")
    assert Deal.objects.get(pk=deal.pk).stage.name == "S1"


def test_a_manager_does_not_see_another_managers_deals_and_switches_language(
    page, expect, manager, other_manager, b2b
):
    mine = deal_create(actor=None, funnel=b2b, title="Mine", owner=manager)
    theirs = deal_create(actor=None, funnel=b2b, title="Theirs", owner=other_manager)
    log_in(page, manager)

    expect(card(page, mine)).to_be_visible()
    expect(card(page, theirs)).to_have_count(0)
    page.select_option("#language-select", "ru")
    page.wait_for_load_state()
    expect(page.locator("html")).to_have_attribute("lang", "ru")
    expect(card(page, mine)).to_be_visible()


def test_the_deal_card_moves_by_keyboard(page, expect, manager, b2b):
    deal = deal_create(actor=None, funnel=b2b, title="Pipes", owner=manager)
    log_in(page, manager)
    page.goto(f"/deals/{deal.pk}/")

    page.locator("#move-stage").select_option(label="S2")
    page.locator("#move-stage").press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator(".inline-dialog")).to_contain_text("To move to “S2”, fill in: Amount.")
    page.locator(".inline-dialog input[name=amount]").fill("700")
    page.locator(".inline-dialog input[name=amount]").press("Enter")

    expect(page.locator(".breadcrumbs")).to_contain_text("S2")
    assert Deal.objects.get(pk=deal.pk).stage.name == "S2"


def test_screenshots_of_the_board_and_the_deal_card(page, expect, manager, other_manager, b2b):
    stage_update(actor=None, stage=stage_of(b2b, "S1"), rotting_days=3)
    now = timezone.now()
    rows = [
        ("S1", "Steel pipes, 40 t", "Uralsteel", "1200000", "site", "warm", 5, -2),
        ("S1", "Valves for the boiler house", "Teplo LLC", "380000", "call", "cold", 1, 0.1),
        ("S1", "Fittings, trial order", "Ivan Petrov", "", "exhibition", "", 0, None),
        ("S2", "Cable 3x2.5, 12 km", "Energo-Stroy", "2450000", "site", "warm", 2, -0.5),
        ("S2", "Pumps, 6 pcs", "Vodokanal", "910000", "referral", "warm", 4, 48),
        ("S3", "Metal frames", "Kazan Build", "5600000", "site", "cold", 6, -30),
        ("S4", "Annual supply contract", "Avtozavod", "12800000", "partner", "warm", 1, 72),
    ]
    deals = []
    for stage, title, client, amount, source, temperature, days, task_hours in rows:
        at = now - datetime.timedelta(days=days, hours=1)
        deal = deal_create(
            actor=None,
            funnel=b2b,
            title=title,
            stage=stage_of(b2b, stage),
            owner=manager,
            values={
                "amount": amount or None,
                "contact_name": client,
                "source": source,
                "temperature": temperature,
            }
            if amount
            else {"contact_name": client, "source": source},
            at=at,
        )
        if task_hours is not None:
            task_create(
                actor=None,
                deal=deal,
                title="Call back",
                due_at=now + datetime.timedelta(hours=task_hours),
            )
        deals.append(deal)
    log_in(page, manager)
    expect(page.locator(".deal-card")).to_have_count(len(rows))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "board.png"))

    deal = deals[3]
    note_add(actor=manager, deal=deal, text="Asked for a discount for 12 km; sent the price list.")
    page.goto(f"/deals/{deal.pk}/")
    expect(page.locator("h1")).to_contain_text(deal.title)
    page.screenshot(path=str(SCREENSHOTS / "deal.png"), full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/board/{b2b.pk}/")
    expect(page.locator(".deal-card")).to_have_count(len(rows))
    page.screenshot(path=str(SCREENSHOTS / "board-phone.png"))


def test_a_long_column_loads_more_cards_on_scroll(page, expect, manager, b2b):
    for n in range(55):
        deal_create(actor=None, funnel=b2b, title=f"Lead {n}", owner=manager)
    log_in(page, manager)
    cards = column(page, stage_of(b2b, "S1")).locator(".deal-card")
    expect(cards).to_have_count(50)

    column(page, stage_of(b2b, "S1")).locator(".load-more").scroll_into_view_if_needed()

    expect(cards).to_have_count(55)
    expect(column(page, stage_of(b2b, "S1")).locator(".load-more")).to_have_count(0)
