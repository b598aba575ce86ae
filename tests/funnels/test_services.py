import datetime
from decimal import Decimal

import pytest

from crm.errors import Forbidden, InvalidInput
from deals.models import StageChange
from funnels.models import CustomField, Funnel, LossReason, Stage, TaskTemplate
from funnels.services import (
    custom_field_add,
    custom_field_update,
    custom_values_clean,
    funnel_create,
    funnel_update,
    loss_reason_add,
    loss_reason_set_active,
    loss_reason_update,
    stage_add,
    stage_update,
    stages_reorder,
)
from tests.factories import FunnelFactory
from tests.story import DealStory

pytestmark = pytest.mark.django_db

SEED_003_REASONS = [
    # (name, position, is_active, requires_comment)
    ("Spam", 0, True, False),
    ("Bought from a competitor", 1, True, False),
    ("Changed their mind", 2, True, False),
    ("Terms or timing did not fit", 3, True, False),
    ("Was only comparing", 4, True, False),
    ("Other", 5, True, True),
]


def stage_rows(funnel: Funnel) -> list[tuple]:
    return list(funnel.stages.order_by("position").values_list("id", "name", "position"))


# ---------------------------------------------------------------- funnel_create


def test_funnel_create_makes_stages_in_order_and_seed_loss_reasons(head, manager):
    funnel = funnel_create(
        actor=head,
        name="  B2C  ",
        stages=[
            "Lead",
            {"name": "Offer", "probability": 40, "rotting_days": 7, "tasks": [("Call", 30)]},
            {"name": "Invoice", "probability": 80, "required_fields": ["amount"]},
        ],
        currency="EUR",
        target_response_minutes=5,
        members=[manager],
    )

    assert (funnel.name, funnel.currency, funnel.target_response_minutes) == ("B2C", "EUR", 5)
    assert list(funnel.members.all()) == [manager]
    assert list(
        funnel.stages.order_by("position").values_list(
            "name", "position", "probability", "rotting_days", "required_fields"
        )
    ) == [
        ("Lead", 0, 0, None, []),
        ("Offer", 1, 40, 7, []),
        ("Invoice", 2, 80, None, ["amount"]),
    ]
    assert funnel.first_stage().name == "Lead"
    assert list(
        TaskTemplate.objects.filter(stage__funnel=funnel).values_list(
            "stage__name", "title", "due_in_minutes"
        )
    ) == [("Offer", "Call", 30)]
    assert (
        list(funnel.loss_reasons.values_list("name", "position", "is_active", "requires_comment"))
        == SEED_003_REASONS
    )


def test_funnel_create_refuses_a_duplicate_name(head):
    FunnelFactory(name="B2B")

    with pytest.raises(InvalidInput) as error:
        funnel_create(actor=head, name="B2B", stages=["S1"])

    assert error.value.message == "A funnel named “B2B” already exists."
    assert error.value.fields == {"name": "Choose another name."}
    assert Funnel.objects.count() == 1
    assert Stage.objects.count() == 4


def test_funnel_create_refuses_a_manager(manager):
    with pytest.raises(Forbidden) as error:
        funnel_create(actor=manager, name="Mine", stages=["S1"])

    assert error.value.message == (
        "Only an administrator or a head of sales can change funnel settings."
    )
    assert Funnel.objects.count() == 0
    assert LossReason.objects.count() == 0


@pytest.mark.parametrize(
    ("name", "stages", "fields"),
    [
        ("  ", ["S1"], {"name": "Enter a name."}),
        ("Empty", [], {"stages": "Add a stage."}),
        (
            "Bad",
            ["S1", {"name": "S2", "probability": 101}],
            {"stages.1.probability": "Probability is a percentage from 0 to 100."},
        ),
    ],
)
def test_funnel_create_refuses_bad_input_and_creates_nothing(sales_admin, name, stages, fields):
    with pytest.raises(InvalidInput) as error:
        funnel_create(actor=sales_admin, name=name, stages=stages)

    assert error.value.fields == fields
    assert (Funnel.objects.count(), Stage.objects.count(), LossReason.objects.count()) == (0, 0, 0)


def test_funnel_update_changes_the_given_settings_and_members(
    sales_admin, funnel, manager, outsider
):
    funnel_update(
        actor=sales_admin,
        funnel=funnel,
        name=" B2B Moscow ",
        currency="EUR",
        target_response_minutes=10,
        is_active=False,
        members=[manager, outsider],
    )

    funnel = Funnel.objects.get(pk=funnel.pk)
    assert (funnel.name, funnel.currency, funnel.target_response_minutes, funnel.is_active) == (
        "B2B Moscow",
        "EUR",
        10,
        False,
    )
    assert list(funnel.members.order_by("username")) == [outsider, manager]


@pytest.mark.parametrize(
    ("values", "fields"),
    [
        ({"name": "Retail"}, {"name": "Choose another name."}),
        ({"name": " "}, {"name": "Enter a name."}),
        ({"name": "x" * 121}, {"name": "Use at most 120 characters."}),
        (
            {"currency": "euro", "target_response_minutes": -1},
            {
                "currency": "Use a three-letter currency code, such as RUB.",
                "target_response_minutes": "Enter a whole number of minutes, 0 or more.",
            },
        ),
    ],
)
def test_funnel_update_refuses_bad_values_and_changes_nothing(head, funnel, values, fields):
    FunnelFactory(name="Retail")

    with pytest.raises(InvalidInput) as error:
        funnel_update(actor=head, funnel=funnel, is_active=False, **values)

    assert error.value.fields == fields
    funnel = Funnel.objects.get(pk=funnel.pk)
    assert (funnel.name, funnel.currency, funnel.is_active) == ("B2B", "RUB", True)


def test_funnel_update_refuses_a_manager(manager, funnel):
    with pytest.raises(Forbidden):
        funnel_update(actor=manager, funnel=funnel, name="Mine")
    assert Funnel.objects.get(pk=funnel.pk).name == "B2B"


# ---------------------------------------------------------------- stages


def test_stage_add_names_a_bad_task_and_adds_nothing(head, funnel):
    before = stage_rows(funnel)

    with pytest.raises(InvalidInput) as error:
        stage_add(
            actor=head,
            funnel=funnel,
            name="S5",
            rotting_days=-1,
        )
    assert error.value.fields == {"rotting_days": "Enter a whole number of days, 0 or more."}
    with pytest.raises(InvalidInput) as error:
        stage_add(actor=head, funnel=funnel, name="S5", tasks=[("Call", 30), ("", -5)])
    assert error.value.fields == {
        "tasks.1.title": "Enter what the owner must do.",
        "tasks.1.due_in_minutes": "Enter a whole number of minutes, 0 or more.",
    }

    assert stage_rows(funnel) == before
    assert TaskTemplate.objects.filter(stage__funnel=funnel).count() == 0


def test_stages_reorder_keeps_ids_and_history(head, manager, funnel, stages):
    story = DealStory(funnel, owner=manager).enters("S1").moves_to("S2")
    history_before = list(StageChange.objects.values_list("id", "from_stage_id", "to_stage_id"))
    s1, s2, s3, s4 = (stages[name].pk for name in ("S1", "S2", "S3", "S4"))

    stages_reorder(actor=head, funnel=funnel, stage_ids=[s4, s1, s3, s2])

    assert stage_rows(funnel) == [(s4, "S4", 0), (s1, "S1", 1), (s3, "S3", 2), (s2, "S2", 3)]
    assert list(StageChange.objects.values_list("id", "from_stage_id", "to_stage_id")) == (
        history_before
    )
    assert history_before == [
        (history_before[0][0], None, s1),
        (history_before[1][0], s1, s2),
    ]
    story.deal.refresh_from_db()
    assert story.deal.stage_id == s2


@pytest.mark.parametrize("drop_or_repeat", ["missing", "repeated", "foreign"])
def test_stages_reorder_needs_every_stage_once(head, funnel, stages, drop_or_repeat):
    before = stage_rows(funnel)
    ids = [stage.pk for stage in stages.values()]
    stage_ids = {
        "missing": ids[:-1],
        "repeated": [*ids[:-1], ids[0]],
        "foreign": [*ids[:-1], FunnelFactory(stages=["X"]).first_stage().pk],
    }[drop_or_repeat]

    with pytest.raises(InvalidInput) as error:
        stages_reorder(actor=head, funnel=funnel, stage_ids=stage_ids)

    assert error.value.message == "Give every stage of the funnel exactly once to reorder them."
    assert error.value.fields == {"stage_ids": "List each of the funnel's stage ids once."}
    assert stage_rows(funnel) == before


def test_stages_reorder_refuses_a_manager(manager, funnel, stages):
    before = stage_rows(funnel)

    with pytest.raises(Forbidden):
        stages_reorder(
            actor=manager, funnel=funnel, stage_ids=[s.pk for s in reversed(stages.values())]
        )

    assert stage_rows(funnel) == before


def test_stage_update_changes_the_given_settings(head, stages):
    stage = stage_update(
        actor=head,
        stage=stages["S2"],
        name="  Offer sent ",
        probability=100,
        target_conversion=Decimal("55.5"),
        required_fields=["amount", "contact_phone"],
    )

    stage.refresh_from_db()
    assert (
        stage.name,
        stage.position,
        stage.probability,
        stage.target_conversion,
        stage.required_fields,
    ) == ("Offer sent", 1, 100, Decimal("55.50"), ["amount", "contact_phone"])


@pytest.mark.parametrize(
    ("values", "fields"),
    [
        ({"probability": 101}, {"probability": "Probability is a percentage from 0 to 100."}),
        ({"probability": -1}, {"probability": "Probability is a percentage from 0 to 100."}),
        (
            {"target_conversion": Decimal("100.01")},
            {"target_conversion": "Target conversion is a percentage from 0 to 100."},
        ),
        ({"name": " "}, {"name": "Enter a stage name."}),
        (
            {"required_fields": ["amount", "budget", "colour"]},
            {"required_fields": "Unknown fields: budget, colour."},
        ),
        (
            {"probability": 150, "required_fields": ["budget"]},
            {
                "probability": "Probability is a percentage from 0 to 100.",
                "required_fields": "Unknown fields: budget.",
            },
        ),
    ],
)
def test_stage_update_refuses_invalid_values(head, stages, values, fields):
    stage = stages["S2"]
    before = Stage.objects.filter(pk=stage.pk).values().get()

    with pytest.raises(InvalidInput) as error:
        stage_update(actor=head, stage=stage, **values)

    assert error.value.message == "The stage has errors: fix the marked fields."
    assert error.value.fields == fields
    assert Stage.objects.filter(pk=stage.pk).values().get() == before


def test_stage_update_refuses_unknown_settings(head, stages):
    with pytest.raises(InvalidInput) as error:
        stage_update(actor=head, stage=stages["S2"], position=0)

    assert error.value.message == "Unknown stage settings: position."
    assert stages["S2"].position == 1
    assert Stage.objects.get(pk=stages["S2"].pk).position == 1


def test_stage_update_accepts_a_custom_field_as_required(head, funnel, stages):
    custom_field_add(actor=head, funnel=funnel, key="budget", label="Budget", type="number")

    stage_update(actor=head, stage=stages["S3"], required_fields=["budget"])

    assert Stage.objects.get(pk=stages["S3"].pk).required_fields == ["budget"]


# ---------------------------------------------------------------- loss reasons


def test_loss_reason_add_appends_and_refuses_duplicates(head, funnel):
    reason = loss_reason_add(actor=head, funnel=funnel, name=" Too expensive ")

    assert (reason.name, reason.position, reason.is_active, reason.requires_comment) == (
        "Too expensive",
        6,
        True,
        False,
    )
    with pytest.raises(InvalidInput) as error:
        loss_reason_add(actor=head, funnel=funnel, name="Spam")
    assert error.value.message == "The funnel already has the loss reason “Spam”."
    assert funnel.loss_reasons.count() == 7


def test_loss_reason_update_renames_and_asks_for_a_comment(head, funnel):
    spam = funnel.loss_reasons.get(name="Spam")

    loss_reason_update(actor=head, reason=spam, name=" Junk ", requires_comment=True)

    assert LossReason.objects.filter(pk=spam.pk).values_list(
        "name", "requires_comment", "is_active"
    ).get() == ("Junk", True, True)


def test_loss_reason_update_refuses_a_taken_name(head, funnel):
    spam = funnel.loss_reasons.get(name="Spam")

    with pytest.raises(InvalidInput) as error:
        loss_reason_update(actor=head, reason=spam, name="Other", is_active=False)

    assert error.value.fields == {"name": "Choose another name."}
    assert LossReason.objects.filter(pk=spam.pk).values_list("name", "is_active").get() == (
        "Spam",
        True,
    )
    # Its own name is not taken by itself.
    loss_reason_update(actor=head, reason=spam, name="Spam")


def test_loss_reason_set_active_retires_and_brings_back(head, funnel):
    spam = funnel.loss_reasons.get(name="Spam")

    loss_reason_set_active(actor=head, reason=spam, is_active=False)
    assert LossReason.objects.get(pk=spam.pk).is_active is False

    loss_reason_set_active(actor=head, reason=spam, is_active=True)
    assert LossReason.objects.get(pk=spam.pk).is_active is True


# ---------------------------------------------------------------- custom fields


def test_custom_field_add_appends_fields_of_every_type(head, funnel):
    for key, field_type, choices in [
        ("note", "text", None),
        ("budget", "number", None),
        ("deadline", "date", None),
        ("size", "choice", ["S", "M", "L"]),
    ]:
        custom_field_add(
            actor=head,
            funnel=funnel,
            key=key,
            label=key.capitalize(),
            type=field_type,
            choices=choices,
        )

    assert list(
        funnel.custom_fields.values_list("key", "label", "type", "choices", "position")
    ) == [
        ("note", "Note", "text", [], 0),
        ("budget", "Budget", "number", [], 1),
        ("deadline", "Deadline", "date", [], 2),
        ("size", "Size", "choice", ["S", "M", "L"], 3),
    ]


@pytest.mark.parametrize(
    ("kwargs", "fields"),
    [
        ({"key": "amount", "type": "text"}, {"key": "This key is taken by a built-in deal field."}),
        (
            {"key": "budget", "type": "number"},
            {"key": "The funnel already has a field with this key."},
        ),
        (
            {"key": "size", "type": "choice"},
            {"choices": "A choice field needs at least one choice."},
        ),
        (
            {"key": "colour", "type": "colour"},
            {"type": "Choose one of: text, number, date, choice."},
        ),
        (
            {"key": "not a slug", "type": "text"},
            {"key": "Enter a valid “slug” consisting of letters, numbers, underscores or hyphens."},
        ),
    ],
)
def test_custom_field_add_names_the_bad_field(head, funnel, kwargs, fields):
    custom_field_add(actor=head, funnel=funnel, key="budget", label="Budget", type="number")

    with pytest.raises(InvalidInput) as error:
        custom_field_add(actor=head, funnel=funnel, label="Label", **kwargs)

    assert error.value.message == "The custom field has errors: fix the marked fields."
    assert error.value.fields == fields
    assert list(CustomField.objects.values_list("key", flat=True)) == ["budget"]


def test_custom_field_update_changes_label_and_choices_not_key_or_type(head, funnel):
    field = custom_field_add(
        actor=head, funnel=funnel, key="size", label="Size", type="choice", choices=["S"]
    )

    custom_field_update(actor=head, field=field, label=" Box size ", choices=["S", "M"])

    assert CustomField.objects.filter(pk=field.pk).values_list(
        "key", "label", "type", "choices"
    ).get() == ("size", "Box size", "choice", ["S", "M"])


def test_custom_field_update_names_the_bad_field_and_changes_nothing(head, manager, funnel):
    field = custom_field_add(
        actor=head, funnel=funnel, key="size", label="Size", type="choice", choices=["S"]
    )

    with pytest.raises(InvalidInput) as error:
        custom_field_update(actor=head, field=field, label="", choices=[])

    assert error.value.fields == {
        "label": "This field cannot be blank.",
        "choices": "A choice field needs at least one choice.",
    }
    assert (field.label, field.choices) == ("Size", ["S"])
    with pytest.raises(Forbidden):
        custom_field_update(actor=manager, field=field, label="Mine")
    assert CustomField.objects.filter(pk=field.pk).values_list("label", "choices").get() == (
        "Size",
        ["S"],
    )


def test_custom_field_add_refuses_a_manager(manager, funnel):
    with pytest.raises(Forbidden):
        custom_field_add(actor=manager, funnel=funnel, key="budget", label="Budget", type="text")

    assert CustomField.objects.count() == 0


@pytest.fixture
def typed_funnel(head, funnel):
    for key, field_type, choices in [
        ("note", "text", None),
        ("budget", "number", None),
        ("deadline", "date", None),
        ("size", "choice", ["S", "M", "L"]),
    ]:
        custom_field_add(
            actor=head, funnel=funnel, key=key, label=key, type=field_type, choices=choices
        )
    return funnel


def test_custom_values_clean_returns_storable_values(typed_funnel):
    cleaned = custom_values_clean(
        typed_funnel,
        {
            "note": 42,
            "budget": "12.50",
            "deadline": datetime.date(2025, 4, 1),
            "size": "M",
        },
    )

    assert cleaned == {"note": "42", "budget": "12.50", "deadline": "2025-04-01", "size": "M"}


def test_custom_values_clean_clears_empty_values(typed_funnel):
    assert custom_values_clean(typed_funnel, {"note": "", "budget": None, "size": ""}) == {
        "note": None,
        "budget": None,
        "size": None,
    }


def test_custom_values_clean_names_every_bad_field(typed_funnel):
    with pytest.raises(InvalidInput) as error:
        custom_values_clean(
            typed_funnel,
            {
                "note": "fine",
                "budget": "twelve",
                "deadline": "01.04.2025",
                "size": "XL",
                "colour": "red",
            },
        )

    assert error.value.message == "Some custom fields are invalid: fix the marked fields."
    assert error.value.fields == {
        "budget": "“twelve” is not a number.",
        "deadline": "“01.04.2025” is not a date (YYYY-MM-DD).",
        "size": "Choose one of: S, M, L.",
        "colour": "The funnel has no custom field “colour”.",
    }


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "1,5"])
def test_custom_values_clean_refuses_numbers_that_are_not_finite(typed_funnel, raw):
    with pytest.raises(InvalidInput) as error:
        custom_values_clean(typed_funnel, {"budget": raw})

    assert error.value.fields == {"budget": f"“{raw}” is not a number."}


def test_custom_values_clean_refuses_what_is_not_an_object(typed_funnel):
    with pytest.raises(InvalidInput) as error:
        custom_values_clean(typed_funnel, ["budget", 1])

    assert error.value.message == "Custom fields must be an object of key: value."


def test_settings_numbers_beyond_the_columns_are_refused_by_the_service(head, funnel):
    with pytest.raises(InvalidInput) as error:
        stage_add(actor=head, funnel=funnel, name="S5", rotting_days=2**31)
    assert error.value.fields == {"rotting_days": "Enter a whole number of days, 0 or more."}
    with pytest.raises(InvalidInput) as error:
        stage_add(actor=head, funnel=funnel, name="S5", tasks=[("Call", 2**40)])
    assert error.value.fields == {
        "tasks.0.due_in_minutes": "Enter a whole number of minutes, 0 or more."
    }
    with pytest.raises(InvalidInput) as error:
        funnel_update(actor=head, funnel=funnel, target_response_minutes=10**12)
    assert error.value.fields == {
        "target_response_minutes": "Enter a whole number of minutes, 0 or more."
    }
