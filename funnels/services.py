"""Every write to funnels, stages, loss reasons and custom fields.

Changing a funnel's settings never rewrites deal history: stages that have
deals are kept (rename and reorder only), loss reasons are retired, not deleted.
"""

import copy
import datetime
import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils.translation import gettext as _

from accounts.models import User
from analytics import facts
from crm.errors import Forbidden, InvalidInput
from funnels.models import (
    DEFAULT_LOSS_REASONS,
    OTHER_LOSS_REASON,
    CustomField,
    CustomFieldType,
    Funnel,
    LossReason,
    Stage,
    TaskTemplate,
    unknown_required_fields,
)

# The largest whole number the settings' integer columns hold (PostgreSQL "integer").
MAX_INT = 2**31 - 1


def funnels_check_configurer(actor: User | None) -> None:
    """Raise ``Forbidden`` unless ``actor`` may change funnel settings: an administrator,
    a head of sales, or the system (``None``)."""
    if actor is not None and not (actor.is_admin_role or actor.is_head):
        raise Forbidden(_("Only an administrator or a head of sales can change funnel settings."))


def _nested(error: InvalidInput, prefix: str) -> InvalidInput:
    """The same error with its fields named under ``prefix`` (``stages.1.name``)."""
    fields = {f"{prefix}.{name}": text for name, text in error.fields.items()}
    return InvalidInput(error.message, fields=fields or {prefix: error.message})


def _too_long(model, field: str, value: str) -> str | None:
    """The error for a value longer than the column, or None."""
    limit = model._meta.get_field(field).max_length
    return _("Use at most %(max)s characters.") % {"max": limit} if len(value) > limit else None


def _funnel_name_clean(name, *, funnel_id: int | None = None) -> str:
    """The name stripped; raises ``InvalidInput`` if it is empty, too long or taken."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput(_("A funnel needs a name."), fields={"name": _("Enter a name.")})
    if too_long := _too_long(Funnel, "name", name):
        raise InvalidInput(_("The funnel's name is too long."), fields={"name": too_long})
    if Funnel.objects.filter(name=name).exclude(pk=funnel_id).exists():
        raise InvalidInput(
            _("A funnel named “%(name)s” already exists.") % {"name": name},
            fields={"name": _("Choose another name.")},
        )
    return name


def _funnel_values_check(*, currency=None, target_response_minutes=None) -> None:
    errors = {}
    if currency is not None and not re.fullmatch(r"[A-Z]{3}", str(currency)):
        errors["currency"] = _("Use a three-letter currency code, such as RUB.")
    if target_response_minutes is not None and not 0 <= int(target_response_minutes) <= MAX_INT:
        errors["target_response_minutes"] = _("Enter a whole number of minutes, 0 or more.")
    if errors:
        raise InvalidInput(_("The funnel has errors: fix the marked fields."), fields=errors)


@transaction.atomic
def funnel_create(
    *,
    actor: User | None,
    name: str,
    stages: Iterable[str | dict],
    currency: str = "RUB",
    target_response_minutes: int = 2,
    members: Iterable[User] = (),
) -> Funnel:
    """Create a funnel with its stages (in order) and the default loss reasons.

    A stage is a name or a dict of Stage fields (``name``, ``probability``,
    ``rotting_days``, ``target_conversion``, ``required_fields``) plus
    ``tasks``: a list of ``(title, due_in_minutes)``.
    """
    funnels_check_configurer(actor)
    name = _funnel_name_clean(name)
    _funnel_values_check(currency=currency, target_response_minutes=target_response_minutes)
    stage_specs = [{"name": s} if isinstance(s, str) else dict(s) for s in stages]
    if not stage_specs:
        raise InvalidInput(
            _("A funnel needs at least one stage."), fields={"stages": _("Add a stage.")}
        )
    funnel = Funnel.objects.create(
        name=name, currency=currency, target_response_minutes=target_response_minutes
    )
    funnel.members.set(list(members))
    for index, spec in enumerate(stage_specs):
        try:
            stage_add(actor=actor, funnel=funnel, **spec)
        except InvalidInput as error:
            raise _nested(error, f"stages.{index}") from None
    for position, reason in enumerate(DEFAULT_LOSS_REASONS):
        LossReason.objects.create(funnel=funnel, name=str(reason), position=position)
    LossReason.objects.create(
        funnel=funnel,
        name=str(OTHER_LOSS_REASON),
        position=len(DEFAULT_LOSS_REASONS),
        requires_comment=True,
    )
    return funnel


# What funnel_update may change; members are given apart.
FUNNEL_SETTINGS = ("name", "is_active", "currency", "target_response_minutes")


@transaction.atomic
def funnel_update(
    *, actor: User | None, funnel: Funnel, members: Iterable[User] | None = None, **values
) -> Funnel:
    """Change any of ``FUNNEL_SETTINGS`` and, when ``members`` is given, who works
    the funnel. The funnel row is locked; nothing is saved if a value is invalid."""
    funnels_check_configurer(actor)
    unknown = set(values) - set(FUNNEL_SETTINGS)
    if unknown:
        raise InvalidInput(
            _("Unknown funnel settings: %(names)s.") % {"names": ", ".join(sorted(unknown))}
        )
    funnel = Funnel.objects.select_for_update().get(pk=funnel.pk)
    if "name" in values:
        values["name"] = _funnel_name_clean(values["name"], funnel_id=funnel.pk)
    _funnel_values_check(
        currency=values.get("currency"),
        target_response_minutes=values.get("target_response_minutes"),
    )
    for name, value in values.items():
        setattr(funnel, name, value)
    if values:
        funnel.save(update_fields=list(values))
    if members is not None:
        funnel.members.set(list(members))
    return funnel


def _validate_stage_values(
    funnel: Funnel, *, name, probability, rotting_days, target_conversion, required_fields
) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not (name or "").strip():
        errors["name"] = _("Enter a stage name.")
    elif too_long := _too_long(Stage, "name", name.strip()):
        errors["name"] = too_long
    if probability is not None and not (0 <= int(probability) <= 100):
        errors["probability"] = _("Probability is a percentage from 0 to 100.")
    if rotting_days is not None and not 0 <= int(rotting_days) <= MAX_INT:
        errors["rotting_days"] = _("Enter a whole number of days, 0 or more.")
    if target_conversion is not None and not (0 <= Decimal(target_conversion) <= 100):
        errors["target_conversion"] = _("Target conversion is a percentage from 0 to 100.")
    unknown = unknown_required_fields(funnel, required_fields or [])
    if unknown:
        errors["required_fields"] = _("Unknown fields: %(fields)s.") % {
            "fields": ", ".join(unknown)
        }
    return errors


@transaction.atomic
def stage_add(
    *,
    actor: User | None,
    funnel: Funnel,
    name: str,
    probability: int = 0,
    rotting_days: int | None = None,
    target_conversion: Decimal | None = None,
    required_fields: list[str] | None = None,
    tasks: Iterable[tuple[str, int]] = (),
) -> Stage:
    """Append a stage at the end of the funnel, with its task templates."""
    funnels_check_configurer(actor)
    errors = _validate_stage_values(
        funnel,
        name=name,
        probability=probability,
        rotting_days=rotting_days,
        target_conversion=target_conversion,
        required_fields=required_fields,
    )
    if errors:
        raise InvalidInput(_("The stage has errors: fix the marked fields."), fields=errors)
    last = Stage.objects.filter(funnel=funnel).aggregate(m=Max("position"))["m"]
    stage = Stage.objects.create(
        funnel=funnel,
        name=name.strip(),
        position=0 if last is None else last + 1,
        probability=probability,
        rotting_days=rotting_days,
        target_conversion=target_conversion,
        required_fields=list(required_fields or []),
    )
    for index, (title, due_in_minutes) in enumerate(tasks):
        try:
            task_template_add(actor=actor, stage=stage, title=title, due_in_minutes=due_in_minutes)
        except InvalidInput as error:
            raise _nested(error, f"tasks.{index}") from None
    facts.record_stage_added(stage)
    return stage


@transaction.atomic
def stage_update(*, actor: User | None, stage: Stage, **values) -> Stage:
    """Change a stage's settings (not its position: see ``stages_reorder``)."""
    funnels_check_configurer(actor)
    allowed = {"name", "probability", "rotting_days", "target_conversion", "required_fields"}
    unknown = set(values) - allowed
    if unknown:
        raise InvalidInput(_("Unknown stage settings: %(names)s.") % {"names": ", ".join(unknown)})
    merged = {name: values.get(name, getattr(stage, name)) for name in allowed}
    errors = _validate_stage_values(
        stage.funnel,
        name=merged["name"],
        probability=merged["probability"],
        rotting_days=merged["rotting_days"],
        target_conversion=merged["target_conversion"],
        required_fields=merged["required_fields"],
    )
    if errors:
        raise InvalidInput(_("The stage has errors: fix the marked fields."), fields=errors)
    for name, value in values.items():
        setattr(stage, name, value.strip() if name == "name" else value)
    stage.save(update_fields=list(values))
    return stage


@transaction.atomic
def stages_reorder(*, actor: User | None, funnel: Funnel, stage_ids: list[int]) -> None:
    """Put the funnel's stages in the given order. History keeps its stage ids."""
    funnels_check_configurer(actor)
    current = list(
        Stage.objects.select_for_update().filter(funnel=funnel).values_list("id", flat=True)
    )
    if sorted(current) != sorted(stage_ids):
        raise InvalidInput(
            _("Give every stage of the funnel exactly once to reorder them."),
            fields={"stage_ids": _("List each of the funnel's stage ids once.")},
        )
    # Two passes keep the unique (funnel, position) constraint true at every statement.
    offset = len(stage_ids) + 1000
    for position, stage_id in enumerate(stage_ids):
        Stage.objects.filter(pk=stage_id).update(position=position + offset)
    for position, stage_id in enumerate(stage_ids):
        Stage.objects.filter(pk=stage_id).update(position=position)
    # "Reached" is by position, so the funnel's summaries are derived again from history.
    facts.facts_rebuild(funnel=funnel)


@transaction.atomic
def task_template_add(
    *, actor: User | None, stage: Stage, title: str, due_in_minutes: int | str
) -> TaskTemplate:
    """A task the owner gets whenever a deal enters ``stage`` (deals already there get none)."""
    funnels_check_configurer(actor)
    errors = {}
    title = (title or "").strip()
    if not title:
        errors["title"] = _("Enter what the owner must do.")
    elif too_long := _too_long(TaskTemplate, "title", title):
        errors["title"] = too_long
    try:
        minutes = int(due_in_minutes)
        if not 0 <= minutes <= MAX_INT:
            raise ValueError
    except (TypeError, ValueError):
        errors["due_in_minutes"] = _("Enter a whole number of minutes, 0 or more.")
    if errors:
        raise InvalidInput(_("The task template has errors: fix the marked fields."), fields=errors)
    return TaskTemplate.objects.create(stage=stage, title=title, due_in_minutes=minutes)


@transaction.atomic
def task_template_remove(*, actor: User | None, template: TaskTemplate) -> None:
    """Stop giving this task on entry. Tasks already given stay with their deals."""
    funnels_check_configurer(actor)
    template.delete()


def _loss_reason_name_clean(funnel: Funnel, name, *, reason_id: int | None = None) -> str:
    """The name stripped; raises ``InvalidInput`` if it is empty, too long or taken."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput(_("Enter a loss reason."), fields={"name": _("Enter a loss reason.")})
    if too_long := _too_long(LossReason, "name", name):
        raise InvalidInput(_("The loss reason is too long."), fields={"name": too_long})
    if LossReason.objects.filter(funnel=funnel, name=name).exclude(pk=reason_id).exists():
        raise InvalidInput(
            _("The funnel already has the loss reason “%(name)s”.") % {"name": name},
            fields={"name": _("Choose another name.")},
        )
    return name


@transaction.atomic
def loss_reason_add(
    *, actor: User | None, funnel: Funnel, name: str, requires_comment: bool = False
) -> LossReason:
    funnels_check_configurer(actor)
    name = _loss_reason_name_clean(funnel, name)
    last = LossReason.objects.filter(funnel=funnel).aggregate(m=Max("position"))["m"]
    return LossReason.objects.create(
        funnel=funnel,
        name=name,
        position=0 if last is None else last + 1,
        requires_comment=requires_comment,
    )


@transaction.atomic
def loss_reason_update(
    *,
    actor: User | None,
    reason: LossReason,
    name: str | None = None,
    requires_comment: bool | None = None,
    is_active: bool | None = None,
) -> LossReason:
    """Rename a reason, change whether it needs a comment, retire it or bring it back
    (``None``: unchanged). Reasons are never deleted: deals lost with one keep it.
    Nothing is saved if the name is invalid."""
    funnels_check_configurer(actor)
    values = {}
    if name is not None:
        values["name"] = _loss_reason_name_clean(reason.funnel, name, reason_id=reason.pk)
    if requires_comment is not None:
        values["requires_comment"] = requires_comment
    if is_active is not None:
        values["is_active"] = is_active
    for field, value in values.items():
        setattr(reason, field, value)
    if values:
        reason.save(update_fields=list(values))
    return reason


def loss_reason_set_active(*, actor: User | None, reason: LossReason, is_active: bool) -> None:
    """Retire (or bring back) a reason. Deals lost with it keep it."""
    loss_reason_update(actor=actor, reason=reason, is_active=is_active)


@transaction.atomic
def custom_field_add(
    *,
    actor: User | None,
    funnel: Funnel,
    key: str,
    label: str,
    type: str,
    choices: list[str] | None = None,
) -> CustomField:
    funnels_check_configurer(actor)
    field = CustomField(funnel=funnel, key=key, label=label, type=type, choices=list(choices or []))
    errors: dict[str, str] = {}
    if type not in CustomFieldType.values:
        errors["type"] = _("Choose one of: %(types)s.") % {
            "types": ", ".join(CustomFieldType.values)
        }
    if CustomField.objects.filter(funnel=funnel, key=key).exists():
        errors["key"] = _("The funnel already has a field with this key.")
    _custom_field_check(field, errors)
    last = CustomField.objects.filter(funnel=funnel).aggregate(m=Max("position"))["m"]
    field.position = 0 if last is None else last + 1
    field.save()
    return field


def _custom_field_check(field: CustomField, errors: dict[str, str]) -> None:
    """Add the model's own errors to ``errors``; raise ``InvalidInput`` if there are any."""
    try:
        field.full_clean(exclude=["funnel"], validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            errors.setdefault(name, " ".join(messages))
    if errors:
        raise InvalidInput(_("The custom field has errors: fix the marked fields."), fields=errors)


@transaction.atomic
def custom_field_update(
    *,
    actor: User | None,
    field: CustomField,
    label: str | None = None,
    choices: list[str] | None = None,
) -> CustomField:
    """Change a field's label or its choices (``None``: unchanged). The key and type
    stay: deals' values are stored under them, and deals keep a value whose
    choice is dropped. Nothing is saved if a value is invalid."""
    funnels_check_configurer(actor)
    values = {}
    if label is not None:
        values["label"] = label.strip()
    if choices is not None:
        values["choices"] = list(choices)
    # Checked on a copy, so that a refused change leaves the caller's object as it was.
    candidate = copy.copy(field)
    for name, value in values.items():
        setattr(candidate, name, value)
    _custom_field_check(candidate, {})
    for name, value in values.items():
        setattr(field, name, value)
    if values:
        field.save(update_fields=list(values))
    return field


def custom_values_clean(funnel: Funnel, values: dict) -> dict:
    """Validate custom field values by type; return them in storable form.

    Unknown keys and values of the wrong type raise ``InvalidInput`` naming
    every bad field. Empty values (``None`` or ``""``) clear the field.
    """
    if not isinstance(values, dict):
        raise InvalidInput(_("Custom fields must be an object of key: value."))
    fields = {f.key: f for f in funnel.custom_fields.all()}
    cleaned: dict = {}
    errors: dict[str, str] = {}
    for key, raw in values.items():
        field = fields.get(key)
        if field is None:
            errors[key] = _("The funnel has no custom field “%(key)s”.") % {"key": key}
            continue
        if raw is None or raw == "":
            cleaned[key] = None
            continue
        if field.type == CustomFieldType.TEXT:
            cleaned[key] = str(raw)
        elif field.type == CustomFieldType.NUMBER:
            try:
                number = Decimal(str(raw))
                if not number.is_finite():
                    raise InvalidOperation
            except (InvalidOperation, ValueError):
                errors[key] = _("“%(value)s” is not a number.") % {"value": raw}
                continue
            cleaned[key] = str(number)
        elif field.type == CustomFieldType.DATE:
            try:
                cleaned[key] = datetime.date.fromisoformat(str(raw)).isoformat()
            except ValueError:
                errors[key] = _("“%(value)s” is not a date (YYYY-MM-DD).") % {"value": raw}
        elif field.type == CustomFieldType.CHOICE:
            if str(raw) not in field.choices:
                errors[key] = _("Choose one of: %(choices)s.") % {
                    "choices": ", ".join(field.choices)
                }
                continue
            cleaned[key] = str(raw)
    if errors:
        raise InvalidInput(
            _("Some custom fields are invalid: fix the marked fields."), fields=errors
        )
    return cleaned
