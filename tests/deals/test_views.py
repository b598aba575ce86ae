"""The managers' workspace through the Django test client: the board, its moves and
dialogs, the deal card, new deal and my tasks."""

import datetime
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from deals.models import Deal, DealStatus, Note, StageChange, StatusChange, Task
from deals.services import deal_create, task_create
from tests.story import nothing_changes

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}


def client_for(user) -> Client:
    client = Client(headers={"accept-language": "en"})
    client.force_login(user)
    return client


@pytest.fixture
def masha(manager):
    return client_for(manager)


def card_ids(response) -> list[int]:
    return [int(i) for i in re.findall(r'data-deal-id="(\d+)"', response.content.decode())]


def text_of(response) -> str:
    return response.content.decode()


def open_deal(funnel, owner, title="Deal", **values):
    return deal_create(actor=None, funnel=funnel, title=title, owner=owner, values=values)


# ---------------------------------------------------------------- log in and layout


def test_the_board_needs_a_login():
    response = Client().get("/board/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/board/"


def test_a_manager_logs_in_with_the_form_and_lands_on_his_first_funnels_board(manager, funnel):
    manager.set_password("secret-pw-1")
    manager.save()
    client = Client(headers={"accept-language": "en"})

    login = client.post("/accounts/login/", {"username": "masha", "password": "secret-pw-1"})
    board = client.get(login["Location"])

    assert login.status_code == 302
    assert login["Location"] == "/board/"
    assert board.status_code == 302
    assert board["Location"] == f"/board/{funnel.pk}/"


def test_a_wrong_password_is_refused_on_the_login_page(manager):
    response = Client(headers={"accept-language": "en"}).post(
        "/accounts/login/", {"username": "masha", "password": "wrong"}
    )

    assert response.status_code == 200
    assert "Please enter a correct username and password" in text_of(response)


def test_the_layout_shows_the_users_name_logout_and_the_language_switch(masha, funnel):
    page = text_of(masha.get(f"/board/{funnel.pk}/"))

    assert "Masha" in page
    assert 'action="/accounts/logout/"' in page
    assert 'action="/i18n/setlang/"' in page
    assert "/static/vendor/htmx.min.js" in page
    assert "/static/vendor/Sortable.min.js" in page


def test_log_out_by_post(masha):
    response = masha.post("/accounts/logout/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert masha.get("/board/").status_code == 302


def test_the_language_switch_sets_the_language_cookie(masha, funnel):
    response = masha.post("/i18n/setlang/", {"language": "ru", "next": f"/board/{funnel.pk}/"})

    assert response.status_code == 302
    assert response.cookies["django_language"].value == "ru"


# ---------------------------------------------------------------- the board


def test_a_manager_sees_only_his_own_deals_by_default(
    masha, manager, other_manager, funnel, stages
):
    mine = open_deal(funnel, manager, "mine")
    open_deal(funnel, other_manager, "petya's")
    lead = open_deal(funnel, None, "lead")

    by_default = masha.get(f"/board/{funnel.pk}/")
    everything = masha.get(f"/board/{funnel.pk}/?owner=all")
    leads = masha.get(f"/board/{funnel.pk}/?owner=none")

    assert by_default.status_code == 200
    assert card_ids(by_default) == [mine.pk]
    assert sorted(card_ids(everything)) == sorted([mine.pk, lead.pk])
    assert card_ids(leads) == [lead.pk]


def test_a_manager_cannot_open_the_board_of_a_funnel_he_does_not_work(masha):
    from tests.factories import FunnelFactory

    other = FunnelFactory(name="Retail")

    assert masha.get(f"/board/{other.pk}/").status_code == 404


def test_columns_show_stage_counts_and_amount_sums(masha, manager, funnel, stages):
    open_deal(funnel, manager, "a", amount="1000")
    open_deal(funnel, manager, "b", amount="250.50")
    page = text_of(masha.get(f"/board/{funnel.pk}/"))

    s1 = re.search(
        rf'data-stage-id="{stages["S1"].pk}".*?data-count="(\d+)".*?data-sum="([\d.]+)"',
        page,
        re.S,
    )
    s2 = re.search(rf'data-stage-id="{stages["S2"].pk}".*?data-count="(\d+)"', page, re.S)
    assert s1.groups() == ("2", "1250.50")
    assert s2.group(1) == "0"


def test_filters_by_source_temperature_and_search(masha, manager, funnel):
    site = open_deal(funnel, manager, "Pipes for Ivanov", source="site", temperature="warm")
    cold = open_deal(funnel, manager, "Cable", source="call", temperature="cold")
    phone = open_deal(funnel, manager, "Valves", contact_phone="+7 900 555 11 22")
    url = f"/board/{funnel.pk}/"

    assert card_ids(masha.get(url, {"source": "site"})) == [site.pk]
    assert card_ids(masha.get(url, {"temperature": "cold"})) == [cold.pk]
    assert card_ids(masha.get(url, {"q": "ivanov"})) == [site.pk]
    assert card_ids(masha.get(url, {"q": "555 11"})) == [phone.pk]


def test_cards_show_task_state_rotting_and_days_in_stage(masha, manager, funnel, stages):
    from funnels.services import stage_update

    stage_update(actor=None, stage=stages["S1"], rotting_days=3)
    now = timezone.now()
    old = deal_create(
        actor=None,
        funnel=funnel,
        title="old",
        owner=manager,
        at=now - datetime.timedelta(days=5),
    )
    task_create(actor=None, deal=old, title="Call", due_at=now - datetime.timedelta(hours=1))
    fresh = open_deal(funnel, manager, "fresh")

    page = text_of(masha.get(f"/board/{funnel.pk}/"))

    old_card = re.search(
        rf'<article class="([^"]*)" data-deal-id="{old.pk}".*?</article>', page, re.S
    )
    fresh_card = re.search(
        rf'<article class="([^"]*)" data-deal-id="{fresh.pk}".*?</article>', page, re.S
    )
    assert old_card.group(1) == "deal-card rotting"
    assert 'data-task-state="overdue"' in old_card.group(0)
    assert "5 days" in old_card.group(0)
    assert fresh_card.group(1) == "deal-card"
    assert 'data-task-state="none"' in fresh_card.group(0)
    assert "0 days" in fresh_card.group(0)


def board_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


def test_the_board_takes_the_same_number_of_queries_for_5_and_50_deals(
    masha, manager, funnel, stages, django_assert_num_queries
):
    url = f"/board/{funnel.pk}/"
    for n in range(5):
        open_deal(funnel, manager, f"d{n}", amount="10")
    # Session, user, funnel, funnels for the switcher, sources, stages, totals, cards.
    with django_assert_num_queries(8):
        small = masha.get(url)
    for n in range(45):
        deal = open_deal(funnel, manager, f"e{n}", amount="10")
        task_create(actor=None, deal=deal, title="Call", due_at=timezone.now())
    with django_assert_num_queries(8):
        large = masha.get(url)

    assert len(card_ids(small)) == 5
    assert len(card_ids(large)) == 50


def test_a_long_column_loads_more_cards_on_request(masha, manager, funnel, stages):
    made = [open_deal(funnel, manager, f"d{n}") for n in range(53)]
    newest_first = [deal.pk for deal in reversed(made)]

    board = masha.get(f"/board/{funnel.pk}/")
    more = masha.get(
        reverse("deals:board_column", args=[stages["S1"].pk]), {"offset": 50, "owner": "me"}
    )

    assert card_ids(board) == newest_first[:50]
    assert f'hx-get="/board/column/{stages["S1"].pk}/?offset=50&amp;owner=me' in text_of(board)
    assert card_ids(more) == newest_first[50:]
    assert "Load more" not in text_of(more)


# ---------------------------------------------------------------- moves from the board


def move(client, deal, stage, **data):
    return client.post(
        reverse("deals:move", args=[deal.pk]),
        {"stage": stage.pk, "version": deal.version, **data},
        headers=HX,
    )


def test_dragging_to_the_next_stage_persists_a_stage_change(masha, manager, funnel, stages):
    deal = open_deal(funnel, manager)

    response = move(masha, deal, stages["S2"])

    assert response.status_code == 200
    assert response["X-Deal-Outcome"] == "ok"
    assert f'data-deal-id="{deal.pk}"' in text_of(response)
    assert f'data-stage-id="{stages["S2"].pk}"' in text_of(response)
    assert f'data-version="{deal.version + 1}"' in text_of(response)
    change = StageChange.objects.filter(deal=deal).latest("id")
    assert (change.from_stage, change.to_stage, change.actor) == (
        stages["S1"],
        stages["S2"],
        manager,
    )


def test_a_stage_with_required_fields_asks_for_exactly_them_then_moves(
    masha, manager, strict, strict_stages
):
    deal = open_deal(strict, manager)

    with nothing_changes(deal):
        asked = move(masha, deal, strict_stages["S2"])
    moved = move(masha, deal, strict_stages["S2"], amount="1000", cf_budget="5000")

    page = text_of(asked)
    assert asked.status_code == 400
    assert asked["X-Deal-Outcome"] == "invalid"
    assert "To move to “S2”, fill in: Amount, Budget." in page
    assert re.findall(r'<input type="(?!hidden)\w+" name="(\w+)"|<select name="(\w+)"', page) == [
        ("amount", ""),
        ("cf_budget", ""),
    ]
    assert f'name="stage" value="{strict_stages["S2"].pk}"' in page
    assert moved.status_code == 200
    deal.refresh_from_db()
    assert (deal.stage, deal.amount, deal.custom_fields) == (
        strict_stages["S2"],
        Decimal("1000.00"),
        {"budget": "5000"},
    )


def test_the_dialog_keeps_what_was_typed_when_something_is_still_missing(
    masha, manager, strict, strict_stages
):
    deal = open_deal(strict, manager)

    response = move(masha, deal, strict_stages["S2"], amount="1000", cf_budget="")

    page = text_of(response)
    assert response.status_code == 400
    assert "To move to “S2”, fill in: Budget." in page
    assert 'name="amount" value="1000"' in page
    assert 'name="cf_budget" value=""' in page


def test_a_stale_version_is_a_conflict_and_nothing_moves(masha, manager, funnel, stages):
    deal = open_deal(funnel, manager)
    stale = Deal.objects.get(pk=deal.pk)
    move(masha, deal, stages["S2"])

    with nothing_changes(deal):
        response = move(masha, stale, stages["S3"])

    assert response.status_code == 409
    assert response["X-Deal-Outcome"] == "conflict"
    assert (
        "Someone changed this deal while you were looking at it. Reload it and try again."
        in text_of(response)
    )


def test_winning_from_the_board_asks_for_missing_fields(masha, manager, strict):
    deal = open_deal(strict, manager)

    with nothing_changes(deal):
        asked = masha.post(reverse("deals:win", args=[deal.pk]), {"version": 1}, headers=HX)
    won = masha.post(
        reverse("deals:win", args=[deal.pk]),
        {
            "version": 1,
            "amount": "1000",
            "cf_budget": "5000",
            "contact_phone": "+7 900 123 45 67",
            "source": "site",
        },
        headers=HX,
    )

    assert asked.status_code == 400
    assert "To win the deal, fill in: Amount, Budget, Client phone, Source." in text_of(asked)
    assert won.status_code == 200
    assert won["X-Deal-Outcome"] == "removed"
    assert Deal.objects.get(pk=deal.pk).status == DealStatus.WON


def test_losing_needs_a_reason_and_other_needs_a_comment(masha, manager, funnel):
    deal = open_deal(funnel, manager)
    url = reverse("deals:lose", args=[deal.pk])
    other = funnel.loss_reasons.get(name="Other")
    spam = funnel.loss_reasons.get(name="Spam")

    dialog = masha.get(url, headers=HX)
    with nothing_changes(deal):
        no_reason = masha.post(url, {"version": 1}, headers=HX)
        no_comment = masha.post(url, {"version": 1, "loss_reason": other.pk}, headers=HX)
    lost = masha.post(url, {"version": 1, "loss_reason": spam.pk}, headers=HX)

    assert dialog.status_code == 200
    assert re.findall(r'<option value="(\d+)"', text_of(dialog)) == [
        str(pk) for pk in funnel.loss_reasons.values_list("pk", flat=True)
    ]
    assert no_reason.status_code == 400
    assert "A deal is closed as lost only with its reason: choose one." in text_of(no_reason)
    assert no_comment.status_code == 400
    assert "The reason “Other” needs a comment: say what happened." in text_of(no_comment)
    assert lost.status_code == 200
    assert lost["X-Deal-Outcome"] == "removed"
    deal.refresh_from_db()
    assert (deal.status, deal.loss_reason) == (DealStatus.LOST, spam)
    assert StatusChange.objects.get(deal=deal).actor == manager


def test_postponing_needs_a_future_date(masha, manager, funnel):
    deal = open_deal(funnel, manager)
    url = reverse("deals:postpone", args=[deal.pk])
    when = timezone.localtime() + datetime.timedelta(days=3)

    with nothing_changes(deal):
        no_date = masha.post(url, {"version": 1}, headers=HX)
    postponed = masha.post(
        url, {"version": 1, "next_contact_at": when.strftime("%Y-%m-%dT%H:%M")}, headers=HX
    )

    assert no_date.status_code == 400
    assert "A postponed deal needs the date of the next contact." in text_of(no_date)
    assert postponed.status_code == 200
    deal.refresh_from_db()
    assert deal.status == DealStatus.POSTPONED
    assert deal.next_contact_at == when.replace(second=0, microsecond=0)


def test_another_managers_deal_is_not_found_everywhere(masha, other_manager, funnel, stages):
    deal = open_deal(funnel, other_manager)

    with nothing_changes(deal):
        responses = [
            masha.get(reverse("deals:detail", args=[deal.pk])),
            masha.get(reverse("deals:card", args=[deal.pk])),
            move(masha, deal, stages["S2"]),
            masha.post(reverse("deals:win", args=[deal.pk]), {"version": 1}, headers=HX),
            masha.post(reverse("deals:lose", args=[deal.pk]), {"version": 1}, headers=HX),
            masha.post(reverse("deals:postpone", args=[deal.pk]), {"version": 1}),
            masha.post(reverse("deals:edit", args=[deal.pk]), {"title": "mine now"}),
            masha.post(reverse("deals:note_add", args=[deal.pk]), {"text": "hi"}),
        ]

    assert [r.status_code for r in responses] == [404] * 8


def test_a_head_moves_his_managers_deal(head, team, manager, funnel, stages):
    deal = open_deal(funnel, manager)

    response = move(client_for(head), deal, stages["S2"])

    assert response.status_code == 200
    assert StageChange.objects.filter(deal=deal).latest("id").actor == head


# ---------------------------------------------------------------- the deal card


def test_the_deal_card_shows_fields_actions_and_the_timeline_in_time_order(
    masha, manager, funnel, stages
):
    from tests.story import DealStory

    story = DealStory(funnel, owner=manager, actor=manager).enters("S1", title="Pipes")
    story.moves_to("S2").moves_to("S3")
    Note.objects.create(deal=story.deal, author=manager, text="Called", created_at=story.clock)

    page = text_of(masha.get(reverse("deals:detail", args=[story.deal.pk])))

    timeline = page[page.index('class="timeline"') :]
    entries = re.findall(r"</span>\s*(opened at “S\d”|moved from “S\d” to “S\d”|note)", timeline)
    assert entries == [
        "opened at “S1”",
        "moved from “S1” to “S2”",
        "moved from “S2” to “S3”",
        "note",
    ]
    assert 'name="title" value="Pipes"' in page
    assert 'id="move-stage"' in page
    assert f'<option value="{stages["S3"].pk}" selected disabled>' in page


def test_editing_the_deal_saves_through_the_service(masha, manager, funnel):
    deal = open_deal(funnel, manager, "Pipes")

    response = masha.post(
        reverse("deals:edit", args=[deal.pk]),
        {"version": 1, "title": "Pipes 2", "amount": "1 500,5", "contact_name": "Ivan"},
    )

    assert response.status_code == 302
    deal.refresh_from_db()
    assert (deal.title, deal.amount, deal.contact.name, deal.version) == (
        "Pipes 2",
        Decimal("1500.50"),
        "Ivan",
        2,
    )


def test_an_invalid_edit_shows_the_errors_and_keeps_what_was_typed(masha, manager, funnel):
    deal = open_deal(funnel, manager, "Pipes")

    with nothing_changes(deal):
        response = masha.post(
            reverse("deals:edit", args=[deal.pk]), {"version": 1, "title": "X", "amount": "lots"}
        )

    page = text_of(response)
    assert response.status_code == 400
    assert "The amount is not a number." in page
    assert "“lots” is not a number." in page
    assert 'name="amount" value="lots"' in page


def test_moving_from_the_card_without_a_mouse(masha, manager, strict, strict_stages):
    deal = open_deal(strict, manager)
    url = reverse("deals:move", args=[deal.pk])

    refused = masha.post(url, {"stage": strict_stages["S2"].pk, "version": 1})
    moved = masha.post(
        url, {"stage": strict_stages["S2"].pk, "version": 1, "amount": "5", "cf_budget": "7"}
    )

    assert refused.status_code == 400
    assert "To move to “S2”, fill in: Amount, Budget." in text_of(refused)
    assert 'class="card-panel inline-dialog"' in text_of(refused)
    assert moved.status_code == 302
    assert moved["Location"] == reverse("deals:detail", args=[deal.pk])
    assert Deal.objects.get(pk=deal.pk).stage == strict_stages["S2"]


def test_lose_and_reopen_from_the_card(masha, manager, funnel):
    deal = open_deal(funnel, manager)
    reason = funnel.loss_reasons.get(name="Spam")

    masha.post(reverse("deals:lose", args=[deal.pk]), {"version": 1, "loss_reason": reason.pk})
    reopened = masha.post(reverse("deals:reopen", args=[deal.pk]), {"version": 2})

    assert reopened.status_code == 302
    assert list(StatusChange.objects.filter(deal=deal).values_list("to_status", flat=True)) == [
        "lost",
        "open",
    ]


def test_tasks_and_notes_on_the_card(masha, manager, funnel):
    deal = open_deal(funnel, manager)
    due = timezone.localtime() + datetime.timedelta(days=1)

    empty = masha.post(reverse("deals:task_add", args=[deal.pk]), {"title": "", "due_at": ""})
    added = masha.post(
        reverse("deals:task_add", args=[deal.pk]),
        {"title": "Send the offer", "due_at": due.strftime("%Y-%m-%dT%H:%M")},
    )
    task = Task.objects.get(deal=deal)
    done = masha.post(reverse("deals:task_done", args=[task.pk]), {"next": "/tasks/"})
    noted = masha.post(reverse("deals:note_add", args=[deal.pk]), {"text": "Called, no answer"})

    assert empty.status_code == 400
    assert "The task has errors: fix the marked fields." in text_of(empty)
    assert added.status_code == 302
    assert (task.title, task.assignee, task.created_by) == ("Send the offer", manager, manager)
    assert done["Location"] == "/tasks/"
    assert Task.objects.get(pk=task.pk).done_at is not None
    assert noted.status_code == 302
    assert list(Note.objects.filter(deal=deal).values_list("text", "author")) == [
        ("Called, no answer", manager.pk)
    ]


# ---------------------------------------------------------------- new deal, my tasks


def test_a_new_deal_with_its_client_inline(masha, manager, funnel, stages):
    response = masha.post(
        reverse("deals:new"),
        {
            "funnel": funnel.pk,
            "title": "Pipes",
            "amount": "900",
            "contact_name": "Ivan",
            "contact_phone": "8 (900) 123-45-67",
            "source": "site",
        },
    )

    deal = Deal.objects.get(title="Pipes")
    assert response.status_code == 302
    assert response["Location"] == reverse("deals:detail", args=[deal.pk])
    assert (deal.owner, deal.stage, deal.amount, deal.source) == (
        manager,
        stages["S1"],
        Decimal("900.00"),
        "site",
    )
    assert (deal.contact.name, deal.contact.phone_normalized) == ("Ivan", "79001234567")


def test_a_new_deal_without_a_title_is_refused(masha, funnel):
    response = masha.post(reverse("deals:new"), {"funnel": funnel.pk, "title": " "})

    assert response.status_code == 400
    assert "A deal needs a title." in text_of(response)
    assert Deal.objects.count() == 0


def test_my_tasks_are_grouped_overdue_today_upcoming_with_due_postponed_deals(
    masha, manager, funnel
):
    now = timezone.localtime()
    deal = open_deal(funnel, manager, "Pipes")
    # The "today" task is due later today whatever the hour the test runs.
    end_of_day = now.replace(hour=23, minute=59, second=0, microsecond=0)
    today_due = now + (end_of_day - now) / 2
    task_create(actor=None, deal=deal, title="late", due_at=now - datetime.timedelta(hours=2))
    task_create(actor=None, deal=deal, title="soon", due_at=today_due)
    task_create(actor=None, deal=deal, title="next week", due_at=now + datetime.timedelta(days=7))
    postponed = open_deal(funnel, manager, "Valves")
    Deal.objects.filter(pk=postponed.pk).update(
        status=DealStatus.POSTPONED, next_contact_at=now - datetime.timedelta(minutes=5)
    )

    page = text_of(masha.get(reverse("deals:my_tasks")))

    groups = re.findall(r'task-group-(\w+)">.*?</section>', page, re.S)
    sections = dict(
        zip(groups, re.findall(r'task-group-\w+">(.*?)</section>', page, re.S), strict=True)
    )
    assert groups == ["overdue", "today", "later"]
    assert "late" in sections["overdue"] and "soon" not in sections["overdue"]
    assert "soon" in sections["today"] and "next week" not in sections["today"]
    assert "next week" in sections["later"]
    assert "Postponed deals to contact now" in page
    assert "Valves" in page


def test_a_user_changes_his_password(manager):
    manager.set_password("old-secret-pw-1")
    manager.save()
    client = client_for(manager)

    form = client.get(reverse("password_change"))
    response = client.post(
        reverse("password_change"),
        {
            "old_password": "old-secret-pw-1",
            "new_password1": "new-secret-pw-2",
            "new_password2": "new-secret-pw-2",
        },
    )

    assert form.status_code == 200
    assert response.status_code == 302
    assert response["Location"] == reverse("password_change_done")
    manager.refresh_from_db()
    assert manager.check_password("new-secret-pw-2")


def test_a_head_sees_his_teams_deals_and_can_filter_by_owner(
    head, team, manager, other_manager, funnel
):
    mashas = open_deal(funnel, manager, "masha's")
    petyas = open_deal(funnel, other_manager, "petya's")
    client = client_for(head)

    everything = client.get(f"/board/{funnel.pk}/")
    only_petya = client.get(f"/board/{funnel.pk}/", {"owner": other_manager.pk})

    assert sorted(card_ids(everything)) == sorted([mashas.pk, petyas.pk])
    assert card_ids(only_petya) == [petyas.pk]
    assert f'<option value="{other_manager.pk}" selected>Petya</option>' in text_of(only_petya)


def test_my_tasks_take_the_same_number_of_queries_for_few_and_many_tasks(
    masha, manager, funnel, django_assert_num_queries
):
    now = timezone.now()

    def add_tasks(count):
        deal = open_deal(funnel, manager, "Pipes")
        for hours in range(-count, count):
            task_create(
                actor=None, deal=deal, title="t", due_at=now + datetime.timedelta(hours=hours)
            )

    add_tasks(1)
    # Session, user, overdue, today, upcoming, postponed deals that are due.
    with django_assert_num_queries(6):
        masha.get(reverse("deals:my_tasks"))
    add_tasks(20)
    with django_assert_num_queries(6):
        response = masha.get(reverse("deals:my_tasks"))

    assert response.content.decode().count("data-task-id=") == 42


# ---------------------------------------------------------------- reassigning


def test_a_head_reassigns_a_deal_from_the_deal_card(head, manager, other_manager, funnel):
    deal = open_deal(funnel, manager, title="Pumps")
    as_head = client_for(head)

    page = text_of(as_head.get(reverse("deals:detail", args=[deal.pk])))
    assert f'<option value="{other_manager.pk}"' in page

    response = as_head.post(
        reverse("deals:assign", args=[deal.pk]),
        {"owner": str(other_manager.pk), "version": str(deal.version)},
    )
    assert response.status_code == 302
    deal.refresh_from_db()
    assert deal.owner == other_manager


def test_a_stale_reassignment_is_refused_and_changes_nothing(head, manager, other_manager, funnel):
    deal = open_deal(funnel, manager)
    response = client_for(head).post(
        reverse("deals:assign", args=[deal.pk]),
        {"owner": str(other_manager.pk), "version": str(deal.version - 1)},
    )
    assert response.status_code == 409
    assert "Someone changed this deal while you were looking at it." in text_of(response)
    deal.refresh_from_db()
    assert deal.owner == manager


def test_a_manager_hands_his_deal_over_and_goes_back_to_the_board(
    masha, manager, other_manager, funnel
):
    deal = open_deal(funnel, manager)
    response = masha.post(
        reverse("deals:assign", args=[deal.pk]),
        {"owner": str(other_manager.pk), "version": str(deal.version)},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("deals:board", args=[funnel.pk])
    deal.refresh_from_db()
    assert deal.owner == other_manager
    assert masha.get(reverse("deals:detail", args=[deal.pk])).status_code == 404
