"""The admin shows everything to a superuser and never edits history."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.urls import reverse

from accounts.services import api_key_create
from analytics.services import snapshot_ensure
from analytics.types import FunnelQuery
from deals.admin import NoteInline, StageChangeInline, StatusChangeInline, TaskInline
from deals.models import Deal, StageChange, WebhookDelivery, WebhookSubscription
from deals.services import note_add, task_create
from funnels.services import custom_field_add
from tests.factories import UserFactory
from tests.story import START, DealStory

pytestmark = pytest.mark.django_db

REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label)


@pytest.fixture
def superuser(db):
    return UserFactory(username="root", is_superuser=True, is_staff=True)


@pytest.fixture
def su_client(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def one_of_everything(head, manager, funnel):
    """At least one row of every model the admin shows."""
    Group.objects.create(name="Auditors")
    custom_field_add(actor=head, funnel=funnel, key="budget", label="Budget", type="number")
    funnel.stages.get(name="S1").task_templates.create(title="Call the lead", due_in_minutes=2)
    story = DealStory(funnel, owner=manager, actor=manager).enters("S1", contact_name="Ivan")
    story.moves_to("S3").moves_to("S2").lost("Spam")
    task_create(actor=manager, deal=story.deal, title="Call back", due_at=START)
    note_add(actor=manager, deal=story.deal, text="No budget")
    api_key_create(name="Site form", scopes=["leads:write"], funnel=funnel)
    snapshot_ensure(
        query=FunnelQuery(funnel_id=funnel.pk, date_from=START.date(), date_to=START.date()),
        label="day",
    )
    subscription = WebhookSubscription.objects.create(
        url="http://127.0.0.1:9/hook", secret="s", events=["won"]
    )
    WebhookDelivery.objects.create(subscription=subscription, event="won", payload={})
    return story


def admin_url(model, action, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{action}", args=args)


@pytest.mark.parametrize("model", REGISTERED, ids=lambda model: model._meta.label)
def test_every_changelist_and_change_page_opens(su_client, one_of_everything, model):
    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"one_of_everything makes no {model._meta.label}"

    assert su_client.get(admin_url(model, "changelist")).status_code == 200
    assert su_client.get(admin_url(model, "change", obj.pk)).status_code == 200


def test_the_deal_page_shows_its_history_read_only(su_client, one_of_everything):
    deal = one_of_everything.deal

    response = su_client.get(admin_url(Deal, "change", deal.pk))

    assert response.status_code == 200
    formsets = {type(f.opts): f for f in response.context["inline_admin_formsets"]}
    assert set(formsets) == {StageChangeInline, StatusChangeInline, TaskInline, NoteInline}
    for inline_class, formset in formsets.items():
        assert (
            formset.has_add_permission,
            formset.has_change_permission,
            formset.formset.can_delete,
            formset.has_view_permission,
        ) == (False, False, False, True), inline_class.__name__
        # Every column is shown, none is an input.
        assert list(formset.formset.form.base_fields) == [], inline_class.__name__
    assert len(formsets[StageChangeInline].formset.forms) == 3
    assert len(formsets[StatusChangeInline].formset.forms) == 1
    content = response.content.decode()
    assert 'name="stage_changes-0-to_stage"' not in content
    assert "No budget" in content


def test_stage_changes_cannot_be_added_changed_or_deleted_in_the_admin(
    rf, superuser, su_client, one_of_everything
):
    model_admin = admin.site._registry[StageChange]
    request = rf.get("/")
    request.user = superuser
    change = StageChange.objects.filter(deal=one_of_everything.deal).first()
    before = list(StageChange.objects.values())

    assert (
        model_admin.has_add_permission(request),
        model_admin.has_change_permission(request, change),
        model_admin.has_delete_permission(request, change),
        model_admin.has_view_permission(request, change),
    ) == (False, False, False, True)
    assert su_client.get(admin_url(StageChange, "add")).status_code == 403
    assert (
        su_client.post(admin_url(StageChange, "delete", change.pk), {"post": "yes"}).status_code
        == 403
    )
    assert (
        su_client.post(
            admin_url(StageChange, "change", change.pk), {"at": "2000-01-01"}
        ).status_code
        == 403
    )
    assert list(StageChange.objects.values()) == before


def test_deals_are_not_added_or_deleted_in_the_admin(su_client, one_of_everything):
    deal = one_of_everything.deal

    assert su_client.get(admin_url(Deal, "add")).status_code == 403
    assert su_client.post(admin_url(Deal, "delete", deal.pk), {"post": "yes"}).status_code == 403
    assert Deal.objects.filter(pk=deal.pk).exists()
