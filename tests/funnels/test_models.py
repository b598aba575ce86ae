"""The funnel invariants the database itself keeps."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction

from funnels.models import Stage
from tests.factories import StageFactory

pytestmark = pytest.mark.django_db


def test_the_database_refuses_a_probability_over_100(funnel):
    with pytest.raises(IntegrityError) as error, transaction.atomic():
        StageFactory(funnel=funnel, probability=101)

    assert "stage_probability_0_100" in str(error.value)
    assert funnel.stages.count() == 4


def test_the_database_refuses_a_target_conversion_over_100(funnel):
    with pytest.raises(IntegrityError) as error, transaction.atomic():
        StageFactory(funnel=funnel, target_conversion=101)

    assert "stage_target_conversion_0_100" in str(error.value)


def test_the_database_refuses_two_stages_at_one_position(funnel):
    with pytest.raises(IntegrityError) as error, transaction.atomic():
        StageFactory(funnel=funnel, name="Twin of S2", position=1)

    if connection.vendor == "postgresql":
        assert "stage_unique_position_per_funnel" in str(error.value)
    else:
        assert "funnels_stage.funnel_id, funnels_stage.position" in str(error.value)
    assert list(funnel.stages.values_list("name", "position")) == [
        ("S1", 0),
        ("S2", 1),
        ("S3", 2),
        ("S4", 3),
    ]


def test_stage_clean_names_the_bad_settings(funnel):
    stage = Stage(funnel=funnel, name="S5", position=4, probability=120)
    with pytest.raises(ValidationError) as error:
        stage.clean()
    assert error.value.message_dict == {
        "probability": ["Probability is a percentage from 0 to 100."]
    }

    stage = Stage(funnel=funnel, name="S5", position=4, required_fields=["amount", "budget"])
    with pytest.raises(ValidationError) as error:
        stage.clean()
    assert error.value.message_dict == {"required_fields": ["Unknown fields: budget."]}
