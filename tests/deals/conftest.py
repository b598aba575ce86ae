import pytest

from funnels.services import custom_field_add, stage_update
from tests.factories import FunnelFactory


@pytest.fixture
def strict(head, manager, other_manager):
    """A funnel with rules: S2 needs an amount and a budget, S3 a client phone and a
    source; entering S1 gives a call task, entering S3 two more."""
    funnel = FunnelFactory(
        name="Strict",
        members=[manager, other_manager],
        stages=[
            {"name": "S1", "probability": 10, "tasks": [("Call the lead", 2)]},
            {"name": "S2", "probability": 30, "required_fields": ["amount"]},
            {
                "name": "S3",
                "probability": 60,
                "required_fields": ["contact_phone", "source"],
                "tasks": [("Send the offer", 60), ("Agree a meeting", 1440)],
            },
            {"name": "S4", "probability": 90},
        ],
    )
    custom_field_add(actor=head, funnel=funnel, key="budget", label="Budget", type="number")
    stage_update(
        actor=head, stage=funnel.stages.get(name="S2"), required_fields=["amount", "budget"]
    )
    return funnel


@pytest.fixture
def strict_stages(strict):
    return {stage.name: stage for stage in strict.stages.all()}


# Everything the strict funnel asks for before S4 and before a win.
ALL_REQUIRED = {
    "amount": "1000",
    "custom_fields": {"budget": "5000"},
    "contact_name": "Ivan",
    "contact_phone": "+7 900 123 45 67",
    "source": "site",
}


@pytest.fixture
def all_required():
    return {**ALL_REQUIRED, "custom_fields": dict(ALL_REQUIRED["custom_fields"])}
