"""The plain-lead reader (deals.serializers.lead_values) gives LeadInput's result or None."""

import pytest

from deals.serializers import LeadInput, lead_values

PLAIN = [
    {"company": "ACME"},
    {
        "title": "  Site form  ",
        "contact": {"name": " Ivan ", "phone": "+7 900 123-45-67", "email": "ivan@example.com"},
        "company": "ACME",
        "source": "site",
        "utm": {"source": "yandex", "campaign": ""},
        "amount": "1500",
        "product": "Boiler",
        "region": "Moscow",
        "temperature": "warm",
        "comment": "Call after 18:00",
        "funnel": 3,
        "owner_id": 5,
        "custom_fields": {"size": 1, "colour": None},
        "external_id": " form-1 ",
    },
    {"contact": {"phone": "89001234567"}, "external_id": None, "amount": None, "funnel": None},
    {"contact": {"email": "A@B.CO"}, "temperature": "", "owner_id": None},
    {"company": "ACME", "something_else": [1, 2]},
    {"company": "ACME", "amount": 12.5},
    {"company": "ACME", "amount": 0, "funnel": 2**31 - 1},
    {"contact": {"name": "Ivan", "phone": "", "email": ""}, "utm": {}},
]

NOT_PLAIN = [
    {"company": "ACME", "title": 5},
    {"company": "ACME", "funnel": "7"},
    {"company": "A" * 201},
    {"company": "ACME", "comment": "x" * 5001},
    {"contact": {}},
    {},
    {"company": "   "},
    {"contact": {"name": "  "}, "company": ""},
    {"company": "ACME", "external_id": ""},
    {"company": "ACME", "external_id": "   "},
    {"company": "ACME", "external_id": "x" * 121},
    {"company": "ACME", "temperature": "hot"},
    {"company": "ACME", "temperature": None},
    {"company": "ACME", "funnel": 0},
    {"company": "ACME", "funnel": True},
    {"company": "ACME", "owner_id": 2**31},
    {"company": "ACME", "amount": "-1"},
    {"company": "ACME", "amount": "abc"},
    {"company": "ACME", "amount": "1e20"},
    {"company": "ACME", "amount": "1.234"},
    {"contact": {"phone": "123"}},
    {"contact": {"email": "nope"}},
    {"contact": {"email": "a@" + "b" * 250 + ".ru"}},
    {"contact": None},
    {"contact": "Ivan"},
    {"contact": {"name": None}},
    {"company": "ACME", "custom_fields": []},
    {"company": "ACME", "custom_fields": None},
    {"company": "a\x00b"},
    {"company": "\ud800"},
    {"company": "x", "utm": {"source": None}},
    {"company": "x", "utm": "yandex"},
    {"company": "x", "utm": {"source": "y" * 201}},
    {"title": None, "company": "x"},
    "a lead",
    ["a", "lead"],
    None,
]


def _drf(item):
    serializer = LeadInput(data=item)
    return serializer.validated_data if serializer.is_valid() else None


@pytest.mark.parametrize("item", PLAIN)
def test_a_plain_lead_is_read_as_lead_input_reads_it(item):
    expected = _drf(item)
    assert expected is not None
    assert lead_values(item) == expected


@pytest.mark.parametrize("item", NOT_PLAIN)
def test_any_other_lead_is_left_to_lead_input(item):
    assert lead_values(item) is None
