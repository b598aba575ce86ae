import datetime

import pytest
from django.utils import timezone

from deals.models import StatusChange, Task
from deals.services import deal_create, deal_postpone
from deals.tasks import resume_due_postponed_deals
from tests.story import deal_row, nothing_changes

pytestmark = pytest.mark.django_db

DAY = datetime.timedelta(days=1)


def test_resume_due_postponed_deals_runs_eagerly_and_twice_safely(manager, funnel):
    now = timezone.now()
    due = deal_create(actor=manager, funnel=funnel, title="Due", owner=manager, at=now - 3 * DAY)
    deal_postpone(actor=manager, deal=due, next_contact_at=now - DAY, at=now - 2 * DAY)
    later = deal_create(actor=manager, funnel=funnel, title="Later", owner=manager)
    deal_postpone(actor=manager, deal=later, next_contact_at=now + DAY)

    result = resume_due_postponed_deals.delay()

    assert result.successful()
    assert result.get() == 1
    assert (deal_row(due)["status"], deal_row(due)["next_contact_at"]) == ("open", None)
    assert list(
        StatusChange.objects.filter(deal=due).values_list("from_status", "to_status", "actor")
    ) == [("open", "postponed", manager.pk), ("postponed", "open", None)]
    assert list(Task.objects.filter(deal=due).values_list("title", "assignee", "due_at")) == [
        ("Contact the client: the postponed deal is due", manager.pk, now - DAY)
    ]
    assert deal_row(later)["status"] == "postponed"

    with nothing_changes(due, later):
        assert resume_due_postponed_deals.delay().get() == 0


def test_resume_due_postponed_deals_with_nothing_due(db):
    assert resume_due_postponed_deals.apply().get() == 0
