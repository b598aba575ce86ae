"""Input and output serializers of the deals API and the lead intake.

Input serializers check shape and types only; the rules (required fields of a
stage, loss reasons, who may do what) stay in the service functions.
"""

import functools

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import EmailValidator
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from crm.api import ErrorSerializer
from deals.models import DealStatus, Temperature
from deals.services import phone_is_valid

# ---------------------------------------------------------------- leads


class LeadContactInput(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    phone = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")
    email = serializers.EmailField(max_length=254, required=False, allow_blank=True, default="")

    def validate_phone(self, value: str) -> str:
        if value and not phone_is_valid(value):
            raise serializers.ValidationError(_("Enter a phone number of 7 to 15 digits."))
        return value


def _reaches_client(contact: dict, company: str) -> bool:
    """A lead needs a way to reach its client: a name, phone, email or company."""
    return bool(contact.get("name") or contact.get("phone") or contact.get("email") or company)


class LeadUtmInput(serializers.Serializer):
    source = serializers.CharField(max_length=200, required=False, allow_blank=True)
    medium = serializers.CharField(max_length=200, required=False, allow_blank=True)
    campaign = serializers.CharField(max_length=200, required=False, allow_blank=True)
    term = serializers.CharField(max_length=200, required=False, allow_blank=True)
    content = serializers.CharField(max_length=200, required=False, allow_blank=True)


class LeadInput(serializers.Serializer):
    """One lead. It needs a way to reach the client: a contact name, phone, email or company."""

    title = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    contact = LeadContactInput(required=False)
    company = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    source = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    utm = LeadUtmInput(required=False)
    amount = serializers.DecimalField(
        max_digits=14, decimal_places=2, min_value=0, required=False, allow_null=True
    )
    product = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    region = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    temperature = serializers.ChoiceField(
        choices=Temperature.choices, required=False, allow_blank=True, default=""
    )
    comment = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")
    funnel = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=2**31 - 1,
        help_text="Funnel id. Default: the API key's funnel.",
    )
    owner_id = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=2**31 - 1,
        help_text="The manager to own the deal. Default: the next manager in turn.",
    )
    custom_fields = serializers.DictField(
        required=False, default=dict, help_text="The funnel's custom fields by key."
    )
    external_id = serializers.CharField(
        max_length=120,
        required=False,
        allow_null=True,
        help_text="Your id of the lead: a lead with an id already taken is not taken again.",
    )

    def validate(self, attrs: dict) -> dict:
        if not _reaches_client(attrs.get("contact") or {}, attrs["company"]):
            raise serializers.ValidationError(
                {"contact": _("Give the client's name, phone, email or company.")}
            )
        return attrs


class _PlainLeadReader:
    """``LeadInput``'s validation of a lead in the plain shape, without DRF's machinery.

    DRF validates a lead field by field through a dozen calls each: a third of a
    batch's CPU. Most leads are plain (strings, ints, a dict of contact details),
    and for those ``read`` returns exactly the ``validated_data`` of ``LeadInput``,
    with the limits read from its fields. Anything else, and any lead with an
    error, gives None: the caller then runs ``LeadInput``, which gives the same
    result or its usual errors. ``read`` never rejects a lead itself.
    """

    def __init__(self) -> None:
        fields = LeadInput().fields
        self.strings: list[tuple[str, int, object]] = []  # (name, max_length, default)
        self.integers: list[tuple[str, int, int]] = []  # (name, min, max)
        for name, field in fields.items():
            if type(field) is serializers.CharField:
                default = field.default if field.default is not serializers.empty else None
                self.strings.append((name, field.max_length, default))
            elif type(field) is serializers.IntegerField:
                self.integers.append((name, field.min_value, field.max_value))
        self.external_id = fields["external_id"]
        self.temperatures = fields["temperature"].choice_strings_to_values
        self.amount = fields["amount"]
        self.contact = [
            (name, field.max_length) for name, field in LeadContactInput().fields.items()
        ]
        self.utm = {name: field.max_length for name, field in LeadUtmInput().fields.items()}
        email_field = LeadContactInput().fields["email"]
        self.email_validators = [v for v in email_field.validators if isinstance(v, EmailValidator)]

    def read(self, item) -> dict | None:
        if type(item) is not dict:
            return None
        values: dict = {}
        for name, max_length, default in self.strings:
            if name not in item:
                if default is not None:
                    values[name] = default
                continue
            value = item[name]
            if value is None and name == "external_id":
                values[name] = None
                continue
            value = _plain_string(value, max_length)
            if value is None or (value == "" and default is None):  # blank external_id
                return None
            values[name] = value
        for name, low, high in self.integers:
            if name in item:
                value = item[name]
                if value is not None and not (type(value) is int and low <= value <= high):
                    return None
                values[name] = value
        temperature = item.get("temperature", "")
        if type(temperature) is not str or (temperature and temperature not in self.temperatures):
            return None
        values["temperature"] = self.temperatures.get(temperature, "")
        if "amount" in item:
            try:
                values["amount"] = self.amount.run_validation(item["amount"])
            except serializers.ValidationError:
                return None
        custom = item.get("custom_fields", {})
        if type(custom) is not dict:
            return None
        values["custom_fields"] = {str(key): value for key, value in custom.items()}
        if "contact" in item:
            contact = self._contact(item["contact"])
            if contact is None:
                return None
            values["contact"] = contact
        if "utm" in item:
            utm = item["utm"]
            if type(utm) is not dict:
                return None
            values["utm"] = {}
            for name, max_length in self.utm.items():
                if name in utm:
                    value = _plain_string(utm[name], max_length)
                    if value is None:
                        return None
                    values["utm"][name] = value
        if not _reaches_client(values.get("contact") or {}, values["company"]):
            return None
        return values

    def _contact(self, contact) -> dict | None:
        if type(contact) is not dict:
            return None
        values = {}
        for name, max_length in self.contact:
            value = _plain_string(contact.get(name, ""), max_length)
            if value is None:
                return None
            values[name] = value
        phone, email = values["phone"], values["email"]
        if phone and not phone_is_valid(phone):
            return None
        if email:
            try:
                for validate in self.email_validators:
                    validate(email)
            except DjangoValidationError:
                return None
        return values


def _plain_string(value, max_length: int) -> str | None:
    """A CharField's value (stripped) if ``value`` is a string it accepts, else None."""
    if type(value) is not str:
        return None
    value = value.strip()
    if len(value) > max_length or "\x00" in value:
        return None
    try:
        value.encode()  # a lone surrogate (DRF refuses it) cannot be encoded
    except UnicodeEncodeError:
        return None
    return value


def lead_values(item) -> dict | None:
    """``LeadInput``'s validated data for a plain lead, or None: then run ``LeadInput``."""
    return _plain_lead_reader().read(item)


@functools.cache
def _plain_lead_reader() -> _PlainLeadReader:
    return _PlainLeadReader()


class LeadBatchInput(serializers.Serializer):
    leads = LeadInput(many=True, help_text="1 to 1,000 leads. A bad lead does not stop the others.")


class LeadResultOutput(serializers.Serializer):
    index = serializers.IntegerField(help_text="The lead's position in the request.")
    status = serializers.ChoiceField(choices=["created", "attached", "rejected"])
    deal_id = serializers.IntegerField(allow_null=True)
    owner_id = serializers.IntegerField(allow_null=True)
    external_id = serializers.CharField(allow_null=True)
    replayed = serializers.BooleanField(
        help_text="The lead's external_id was taken before: this is that lead's outcome."
    )
    error = ErrorSerializer(allow_null=True)


class LeadBatchOutput(serializers.Serializer):
    results = LeadResultOutput(many=True)
    created = serializers.IntegerField()
    attached = serializers.IntegerField()
    rejected = serializers.IntegerField()


# ---------------------------------------------------------------- deals


class ContactOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    phone = serializers.CharField()
    email = serializers.CharField()
    company = serializers.CharField()


class DealOutput(serializers.Serializer):
    id = serializers.IntegerField()
    funnel = serializers.IntegerField(source="funnel_id")
    stage = serializers.IntegerField(source="stage_id")
    stage_name = serializers.CharField(source="stage.name")
    status = serializers.ChoiceField(choices=DealStatus.choices)
    title = serializers.CharField()
    owner = serializers.IntegerField(source="owner_id", allow_null=True)
    contact = ContactOutput(allow_null=True)
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    source = serializers.CharField()
    product = serializers.CharField()
    region = serializers.CharField()
    temperature = serializers.CharField()
    expected_close_date = serializers.DateField(allow_null=True)
    next_contact_at = serializers.DateTimeField(allow_null=True)
    loss_reason = serializers.IntegerField(source="loss_reason_id", allow_null=True)
    loss_comment = serializers.CharField()
    custom_fields = serializers.DictField()
    external_id = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    stage_entered_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()
    version = serializers.IntegerField(help_text="Send it back as expected_version.")


class DealPageOutput(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="The next page's URL (a cursor).")
    previous = serializers.URLField(allow_null=True)
    results = DealOutput(many=True)


class DealFilterInput(serializers.Serializer):
    funnel = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)
    stage = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)
    status = serializers.ChoiceField(choices=DealStatus.choices, required=False)
    owner = serializers.RegexField(
        r"^(none|[1-9][0-9]{0,9})$",
        required=False,
        help_text="A user id, or `none` for unassigned deals.",
    )
    source = serializers.CharField(required=False, max_length=100)
    created_from = serializers.DateField(required=False, help_text="First day, inclusive.")
    created_to = serializers.DateField(required=False, help_text="Last day, inclusive.")


class DealValuesInput(serializers.Serializer):
    """Editable fields of a deal and its client's details."""

    title = serializers.CharField(max_length=255, required=False)
    amount = serializers.DecimalField(
        max_digits=14, decimal_places=2, min_value=0, required=False, allow_null=True
    )
    source = serializers.CharField(max_length=100, required=False, allow_blank=True)
    product = serializers.CharField(max_length=100, required=False, allow_blank=True)
    region = serializers.CharField(max_length=100, required=False, allow_blank=True)
    temperature = serializers.ChoiceField(
        choices=Temperature.choices, required=False, allow_blank=True
    )
    expected_close_date = serializers.DateField(required=False, allow_null=True)
    custom_fields = serializers.DictField(required=False)
    contact_name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    contact_phone = serializers.CharField(max_length=40, required=False, allow_blank=True)
    contact_email = serializers.CharField(max_length=254, required=False, allow_blank=True)
    company = serializers.CharField(max_length=200, required=False, allow_blank=True)


class DealCreateInput(DealValuesInput):
    funnel = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    title = serializers.CharField(max_length=255)
    stage = serializers.IntegerField(
        required=False, min_value=1, max_value=2**31 - 1, help_text="Default: the first stage."
    )
    owner = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    external_id = serializers.CharField(max_length=120, required=False, allow_null=True)


class DealUpdateInput(DealValuesInput):
    expected_version = serializers.IntegerField(required=False, min_value=1)


class VersionedInput(serializers.Serializer):
    expected_version = serializers.IntegerField(
        required=False, min_value=1, help_text="The version you saw: a stale one gives 409."
    )


class DealMoveInput(VersionedInput):
    stage = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    values = DealValuesInput(required=False, help_text="Fields to fill in the same step.")


class DealWinInput(VersionedInput):
    values = DealValuesInput(required=False)


class DealLoseInput(VersionedInput):
    loss_reason = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    comment = serializers.CharField(required=False, allow_blank=True, default="")


class DealPostponeInput(VersionedInput):
    next_contact_at = serializers.DateTimeField()
    comment = serializers.CharField(required=False, allow_blank=True, default="")


class DealReopenInput(VersionedInput):
    comment = serializers.CharField(required=False, allow_blank=True, default="")


class DealAssignInput(VersionedInput):
    owner = serializers.IntegerField(
        allow_null=True, min_value=1, max_value=2**31 - 1, help_text="null: unassigned."
    )


class StageChangeOutput(serializers.Serializer):
    id = serializers.IntegerField()
    from_stage = serializers.IntegerField(source="from_stage_id", allow_null=True)
    to_stage = serializers.IntegerField(source="to_stage_id")
    at = serializers.DateTimeField()
    actor = serializers.IntegerField(source="actor_id", allow_null=True)


class StatusChangeOutput(serializers.Serializer):
    id = serializers.IntegerField()
    from_status = serializers.CharField()
    to_status = serializers.CharField()
    stage = serializers.IntegerField(source="stage_id")
    at = serializers.DateTimeField()
    actor = serializers.IntegerField(source="actor_id", allow_null=True)
    loss_reason = serializers.IntegerField(source="loss_reason_id", allow_null=True)
    comment = serializers.CharField()
    next_contact_at = serializers.DateTimeField(allow_null=True)


class DealHistoryOutput(serializers.Serializer):
    stage_changes = StageChangeOutput(many=True)
    status_changes = StatusChangeOutput(many=True)


class TaskOutput(serializers.Serializer):
    id = serializers.IntegerField()
    title = serializers.CharField()
    due_at = serializers.DateTimeField()
    done_at = serializers.DateTimeField(allow_null=True)
    assignee = serializers.IntegerField(source="assignee_id", allow_null=True)
    created_at = serializers.DateTimeField()


class TaskInput(serializers.Serializer):
    title = serializers.CharField(max_length=200)
    due_at = serializers.DateTimeField()
    assignee = serializers.IntegerField(required=False, allow_null=True, min_value=1)


class NoteOutput(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()
    author = serializers.IntegerField(source="author_id", allow_null=True)
    created_at = serializers.DateTimeField()


class NoteInput(serializers.Serializer):
    text = serializers.CharField(max_length=20000)
