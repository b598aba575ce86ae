import pytest

from deals.selectors import deal_history, deals_visible_to, user_can_change_deal
from deals.services import deal_create, note_add, task_create
from tests.factories import FunnelFactory, UserFactory
from tests.story import START, DealStory

pytestmark = pytest.mark.django_db


@pytest.fixture
def deals(manager, other_manager, outsider, head, funnel):
    """One deal of each kind, by title.

    B2B is worked by masha and petya (head's team); Retail only by kolya (another team).
    """
    retail = FunnelFactory(name="Retail", members=[outsider])
    made = [
        deal_create(actor=None, funnel=funnel, title="masha's", owner=manager),
        deal_create(actor=None, funnel=funnel, title="petya's", owner=other_manager),
        deal_create(actor=None, funnel=funnel, title="head's", owner=head),
        deal_create(actor=None, funnel=funnel, title="B2B lead"),
        deal_create(actor=None, funnel=retail, title="kolya's", owner=outsider),
        deal_create(actor=None, funnel=retail, title="Retail lead"),
    ]
    return {deal.title: deal for deal in made}


def visible_titles(user) -> set[str]:
    return set(deals_visible_to(user).values_list("title", flat=True))


def test_a_manager_sees_his_deals_and_the_unassigned_leads_of_his_funnels(manager, outsider, deals):
    assert visible_titles(manager) == {"masha's", "B2B lead"}
    assert visible_titles(outsider) == {"kolya's", "Retail lead"}


def test_a_head_sees_his_teams_deals_and_the_leads_of_the_funnels_they_work(head, deals):
    assert visible_titles(head) == {"masha's", "petya's", "head's", "B2B lead"}


def test_a_head_with_no_team_sees_only_his_own_deals(deals, funnel):
    lonely = UserFactory(username="lonely", role="head")
    deal_create(actor=None, funnel=funnel, title="lonely's", owner=lonely)

    assert visible_titles(lonely) == {"lonely's"}


def test_an_admin_and_a_superuser_see_everything(sales_admin, deals):
    superuser = UserFactory(username="root", is_superuser=True, is_staff=True)

    everything = {"masha's", "petya's", "head's", "B2B lead", "kolya's", "Retail lead"}
    assert visible_titles(sales_admin) == everything
    assert visible_titles(superuser) == everything


def test_the_visible_deals_are_one_query_for_every_role(
    manager, head, sales_admin, deals, django_assert_num_queries
):
    for user in (manager, head, sales_admin):
        with django_assert_num_queries(1):
            list(deals_visible_to(user))


def test_who_may_change_a_deal_is_who_sees_it(manager, other_manager, outsider, head, deals):
    for user in (manager, other_manager, outsider, head):
        visible = visible_titles(user)
        assert {
            title for title, deal in deals.items() if user_can_change_deal(user, deal)
        } == visible, user.username


def test_deal_history_lists_everything_in_time_order_in_four_queries(
    manager, funnel, django_assert_num_queries
):
    story = DealStory(funnel, owner=manager, actor=manager).enters("S1").moves_to("S3")
    story.moves_to("S2").lost("Spam")
    task_create(actor=manager, deal=story.deal, title="Call back", due_at=START)
    note_add(actor=manager, deal=story.deal, text="No budget", at=START)

    with django_assert_num_queries(4):
        history = deal_history(story.deal)
        stage_path = [
            (c.from_stage.name if c.from_stage else None, c.to_stage.name, c.actor.username)
            for c in history["stage_changes"]
        ]
        status_path = [
            (c.from_status, c.to_status, c.stage.name, c.loss_reason.name)
            for c in history["status_changes"]
        ]
        todo = [(t.title, t.assignee.username) for t in history["tasks"]]
        notes = [(n.text, n.author.username) for n in history["notes"]]

    assert stage_path == [(None, "S1", "masha"), ("S1", "S3", "masha"), ("S3", "S2", "masha")]
    assert status_path == [("open", "lost", "S2", "Spam")]
    assert todo == [("Call back", "masha")]
    assert notes == [("No budget", "masha")]
