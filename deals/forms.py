"""Turning posted forms into service arguments, and service errors into dialog fields.

No rules live here: the service functions validate. This module only maps the
names of HTML inputs to the ``values`` the services take, and the field names
of an ``InvalidInput`` to the inputs a dialog must show.
"""

import dataclasses

from django.utils.translation import gettext_lazy as _

from deals.models import Deal, Temperature
from deals.services import CONTACT_FIELDS, EDITABLE_FIELDS
from funnels.models import REQUIRABLE_DEAL_FIELDS, CustomField, CustomFieldType

CUSTOM_PREFIX = "cf_"

# Inputs of the deal's own fields: (input name, HTML input type).
_INPUT_TYPES = {
    "title": "text",
    "amount": "number",
    "source": "text",
    "product": "text",
    "region": "text",
    "temperature": "select",
    "expected_close_date": "date",
    "contact_name": "text",
    "contact_phone": "tel",
    "contact_email": "email",
    "company": "text",
}
_LABELS = {
    "title": _("Title"),
    "contact_name": _("Client"),
    **REQUIRABLE_DEAL_FIELDS,
}
# A required "contact" (a client at all) is asked for by the client's name.
_REQUIRED_TO_INPUT = {"contact": "contact_name"}
_CUSTOM_INPUT_TYPES = {
    CustomFieldType.TEXT: "text",
    CustomFieldType.NUMBER: "number",
    CustomFieldType.DATE: "date",
    CustomFieldType.CHOICE: "select",
}


@dataclasses.dataclass
class FieldInput:
    """One input of a dialog or form."""

    name: str
    label: str
    type: str
    value: str = ""
    error: str = ""
    choices: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def deal_values_from_post(post) -> dict:
    """The editable deal fields and client details present in a POST, as service ``values``."""
    names = [name for name in EDITABLE_FIELDS if name != "custom_fields"] + list(CONTACT_FIELDS)
    values = {name: post[name] for name in names if name in post}
    custom = {
        key[len(CUSTOM_PREFIX) :]: value
        for key, value in post.items()
        if key.startswith(CUSTOM_PREFIX)
    }
    if custom:
        values["custom_fields"] = custom
    return values


def _deal_value(deal: Deal, name: str) -> str:
    if name.startswith(CUSTOM_PREFIX):
        value = (deal.custom_fields or {}).get(name[len(CUSTOM_PREFIX) :])
    elif name in CONTACT_FIELDS:
        value = getattr(deal.contact, CONTACT_FIELDS[name]) if deal.contact_id else ""
    else:
        value = getattr(deal, name, "")
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _input_for(
    name: str, custom_fields: dict[str, CustomField], *, value: str = "", error: str = ""
) -> FieldInput | None:
    if name in _REQUIRED_TO_INPUT:
        name = _REQUIRED_TO_INPUT[name]
    if name in _INPUT_TYPES:
        choices = list(Temperature.choices) if name == "temperature" else []
        return FieldInput(
            name=name,
            label=str(_LABELS[name]),
            type=_INPUT_TYPES[name],
            value=value,
            error=error,
            choices=[(str(v), str(label)) for v, label in choices],
        )
    key = name[len(CUSTOM_PREFIX) :] if name.startswith(CUSTOM_PREFIX) else name
    field = custom_fields.get(key)
    if field is None:
        return None
    return FieldInput(
        name=CUSTOM_PREFIX + key,
        label=field.label,
        type=_CUSTOM_INPUT_TYPES[field.type],
        value=value,
        error=error,
        choices=[(choice, choice) for choice in field.choices],
    )


def dialog_inputs(deal: Deal, errors: dict[str, str], post=None) -> list[FieldInput]:
    """The inputs a move or win dialog shows: every field named by the error, plus
    every deal field already posted from the dialog (so nothing typed is lost)."""
    custom_fields = {field.key: field for field in deal.funnel.custom_fields.all()}
    post = post or {}
    wanted: list[str] = []
    for name in post:
        if name in _INPUT_TYPES or name.startswith(CUSTOM_PREFIX):
            wanted.append(name)
    for name in errors:
        wanted.append(name)
    inputs: dict[str, FieldInput] = {}
    for name in wanted:
        spec = _input_for(name, custom_fields)
        if spec is None or spec.name in inputs:
            continue
        spec.value = post.get(spec.name, _deal_value(deal, spec.name))
        inputs[spec.name] = spec
    for name, text in errors.items():
        spec = _input_for(name, custom_fields)
        if spec is not None and spec.name in inputs:
            inputs[spec.name].error = text
    return list(inputs.values())


def deal_form_inputs(
    deal: Deal, custom_fields: list[CustomField], errors: dict[str, str], post=None
) -> list[FieldInput]:
    """Every editable input of the deal card, with values (posted ones after an error)."""
    by_key = {field.key: field for field in custom_fields}
    names = [
        "title",
        "amount",
        "contact_name",
        "contact_phone",
        "contact_email",
        "company",
        "source",
        "product",
        "region",
        "temperature",
        "expected_close_date",
    ] + [CUSTOM_PREFIX + field.key for field in custom_fields]
    inputs = []
    for name in names:
        spec = _input_for(name, by_key)
        spec.value = post.get(name, "") if post is not None else _deal_value(deal, name)
        key = name[len(CUSTOM_PREFIX) :] if name.startswith(CUSTOM_PREFIX) else name
        spec.error = errors.get(key, errors.get(name, ""))
        inputs.append(spec)
    return inputs
