"""Funnel settings pages: only admins and heads; every change through funnels.services."""

import re
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from funnels.models import Funnel, LossReason

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client(headers={"accept-language": "en"})
    client.force_login(user)
    return client


@pytest.fixture
def as_head(head):
    return client_for(head)


def test_a_manager_cannot_open_funnel_settings(manager, funnel):
    client = client_for(manager)

    assert client.get(reverse("funnels:list")).status_code == 403
    assert client.get(reverse("funnels:settings", args=[funnel.pk])).status_code == 403
    assert (
        client.post(reverse("funnels:stage_add", args=[funnel.pk]), {"name": "S5"}).status_code
        == 403
    )
    assert funnel.stages.count() == 4


def test_a_head_creates_a_funnel_with_its_stages(as_head):
    response = as_head.post(
        reverse("funnels:list"), {"name": "Retail", "stages": "New\n Paid \n\nShipped"}
    )

    funnel = Funnel.objects.get(name="Retail")
    assert response.status_code == 302
    assert response["Location"] == reverse("funnels:settings", args=[funnel.pk])
    assert list(funnel.stages.values_list("name", flat=True)) == ["New", "Paid", "Shipped"]
    assert funnel.loss_reasons.count() == 6


def test_a_funnel_needs_a_unique_name(as_head, funnel):
    response = as_head.post(reverse("funnels:list"), {"name": "B2B", "stages": "A"})

    assert response.status_code == 400
    assert "A funnel named “B2B” already exists." in response.content.decode()


def test_the_settings_page_lists_stages_reasons_and_fields(as_head, funnel):
    page = as_head.get(reverse("funnels:settings", args=[funnel.pk])).content.decode()

    assert re.findall(r'name="name" value="(S\d)"', page) == ["S1", "S2", "S3", "S4"]
    assert "Bought from a competitor" in page
    assert 'value="expected_close_date"' in page


def test_a_stage_is_edited(as_head, funnel, stages):
    response = as_head.post(
        reverse("funnels:stage_edit", args=[funnel.pk, stages["S2"].pk]),
        {
            "name": "Qualified",
            "probability": "40",
            "rotting_days": "5",
            "target_conversion": "55,5",
            "required_fields": ["amount", "source"],
        },
    )

    stage = funnel.stages.get(pk=stages["S2"].pk)
    assert response.status_code == 302
    assert (
        stage.name,
        stage.probability,
        stage.rotting_days,
        stage.target_conversion,
        stage.required_fields,
    ) == ("Qualified", 40, 5, Decimal("55.50"), ["amount", "source"])


def test_an_invalid_stage_is_refused_with_the_message(as_head, funnel, stages):
    response = as_head.post(
        reverse("funnels:stage_edit", args=[funnel.pk, stages["S2"].pk]),
        {"name": "S2", "probability": "150"},
    )
    not_a_number = as_head.post(
        reverse("funnels:stage_edit", args=[funnel.pk, stages["S2"].pk]),
        {"name": "S2", "rotting_days": "soon"},
    )

    assert response.status_code == 400
    assert "The stage has errors: fix the marked fields." in response.content.decode()
    assert "Probability is a percentage from 0 to 100." in response.content.decode()
    assert not_a_number.status_code == 400
    assert "“soon” is not a number." in not_a_number.content.decode()
    assert funnel.stages.get(pk=stages["S2"].pk).probability == 0


def test_a_stage_is_added_with_a_task_template(as_head, funnel):
    as_head.post(
        reverse("funnels:stage_add", args=[funnel.pk]),
        {
            "name": "S5",
            "probability": "95",
            "task_title": "Send the invoice",
            "task_due_in_minutes": "30",
        },
    )

    stage = funnel.stages.get(name="S5")
    assert (stage.position, stage.probability) == (4, 95)
    assert list(stage.task_templates.values_list("title", "due_in_minutes")) == [
        ("Send the invoice", 30)
    ]


def test_stages_are_reordered(as_head, funnel, stages):
    order = [stages[name].pk for name in ("S2", "S1", "S4", "S3")]

    response = as_head.post(
        reverse("funnels:stages_reorder", args=[funnel.pk]), {"stage_ids": order}
    )

    assert response.status_code == 302
    assert list(funnel.stages.order_by("position").values_list("name", flat=True)) == [
        "S2",
        "S1",
        "S4",
        "S3",
    ]


def test_loss_reasons_are_added_and_retired(as_head, funnel):
    as_head.post(
        reverse("funnels:loss_reason_add", args=[funnel.pk]),
        {"name": "No budget", "requires_comment": "on"},
    )
    spam = funnel.loss_reasons.get(name="Spam")
    as_head.post(
        reverse("funnels:loss_reason_toggle", args=[funnel.pk, spam.pk]), {"is_active": "false"}
    )

    added = LossReason.objects.get(funnel=funnel, name="No budget")
    assert (added.is_active, added.requires_comment) == (True, True)
    assert LossReason.objects.get(pk=spam.pk).is_active is False


def test_a_custom_field_is_added_and_can_be_required(as_head, funnel, stages):
    as_head.post(
        reverse("funnels:custom_field_add", args=[funnel.pk]),
        {"key": "budget", "label": "Budget", "type": "choice", "choices": "small, big"},
    )
    bad = as_head.post(
        reverse("funnels:custom_field_add", args=[funnel.pk]),
        {"key": "amount", "label": "Amount", "type": "text"},
    )
    as_head.post(
        reverse("funnels:stage_edit", args=[funnel.pk, stages["S3"].pk]),
        {"name": "S3", "required_fields": ["budget"]},
    )

    field = funnel.custom_fields.get()
    assert (field.key, field.type, field.choices) == ("budget", "choice", ["small", "big"])
    assert bad.status_code == 400
    assert "This key is taken by a built-in deal field." in bad.content.decode()
    assert funnel.stages.get(name="S3").required_fields == ["budget"]


def test_task_templates_of_an_existing_stage_are_added_and_removed(as_head, funnel, stages):
    url = reverse("funnels:task_template_add", args=[funnel.pk, stages["S2"].pk])

    refused = as_head.post(url, {"title": " ", "due_in_minutes": "-5"})
    assert refused.status_code == 400
    assert "The task template has errors: fix the marked fields." in refused.content.decode()
    assert not stages["S2"].task_templates.exists()

    response = as_head.post(url, {"title": "Call the client back", "due_in_minutes": "15"})
    assert response.status_code == 302
    template = stages["S2"].task_templates.get()
    assert (template.title, template.due_in_minutes) == ("Call the client back", 15)
    page = as_head.get(reverse("funnels:settings", args=[funnel.pk])).content.decode()
    assert "Call the client back (15 minutes)" in page

    as_head.post(reverse("funnels:task_template_remove", args=[funnel.pk, template.pk]))
    assert not stages["S2"].task_templates.exists()


def test_a_manager_cannot_change_task_templates(manager, funnel, stages):
    response = client_for(manager).post(
        reverse("funnels:task_template_add", args=[funnel.pk, stages["S2"].pk]),
        {"title": "Sneaky", "due_in_minutes": "1"},
    )
    assert response.status_code == 403
    assert not stages["S2"].task_templates.exists()
