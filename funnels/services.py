"""Every write to funnels, stages, loss reasons and custom fields.

Changing a funnel's settings never rewrites deal history: stages that have
deals are kept (rename and reorder only), loss reasons are retired, not deleted.
"""

import datetime
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

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


def _check_can_configure(actor: User | None) -> None:
    if actor is not None and not (actor.is_admin_role or actor.is_head):
        raise Forbidden(_("Only an administrator or a head of sales can change funnel settings."))


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
    _check_can_configure(actor)
    name = (name or "").strip()
    if not name:
        raise InvalidInput(_("A funnel needs a name."), fields={"name": _("Enter a name.")})
    if Funnel.objects.filter(name=name).exists():
        raise InvalidInput(
            _("A funnel named “%(name)s” already exists.") % {"name": name},
            fields={"name": _("Choose another name.")},
        )
    stage_specs = [{"name": s} if isinstance(s, str) else dict(s) for s in stages]
    if not stage_specs:
        raise InvalidInput(
            _("A funnel needs at least one stage."), fields={"stages": _("Add a stage.")}
        )
    funnel = Funnel.objects.create(
        name=name, currency=currency, target_response_minutes=target_response_minutes
    )
    funnel.members.set(list(members))
    for spec in stage_specs:
        stage_add(actor=actor, funnel=funnel, **spec)
    for position, reason in enumerate(DEFAULT_LOSS_REASONS):
        LossReason.objects.create(funnel=funnel, name=str(reason), position=position)
    LossReason.objects.create(
        funnel=funnel,
        name=str(OTHER_LOSS_REASON),
        position=len(DEFAULT_LOSS_REASONS),
        requires_comment=True,
    )
    return funnel


def _validate_stage_values(
    funnel: Funnel, *, name, probability, target_conversion, required_fields
) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not (name or "").strip():
        errors["name"] = _("Enter a stage name.")
    if probability is not None and not (0 <= int(probability) <= 100):
        errors["probability"] = _("Probability is a percentage from 0 to 100.")
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
    _check_can_configure(actor)
    errors = _validate_stage_values(
        funnel,
        name=name,
        probability=probability,
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
    for title, due_in_minutes in tasks:
        TaskTemplate.objects.create(stage=stage, title=title, due_in_minutes=due_in_minutes)
    facts.record_stage_added(stage)
    return stage


@transaction.atomic
def stage_update(*, actor: User | None, stage: Stage, **values) -> Stage:
    """Change a stage's settings (not its position: see ``stages_reorder``)."""
    _check_can_configure(actor)
    allowed = {"name", "probability", "rotting_days", "target_conversion", "required_fields"}
    unknown = set(values) - allowed
    if unknown:
        raise InvalidInput(_("Unknown stage settings: %(names)s.") % {"names": ", ".join(unknown)})
    merged = {name: values.get(name, getattr(stage, name)) for name in allowed}
    errors = _validate_stage_values(
        stage.funnel,
        name=merged["name"],
        probability=merged["probability"],
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
    _check_can_configure(actor)
    current = list(
        Stage.objects.select_for_update().filter(funnel=funnel).values_list("id", flat=True)
    )
    if sorted(current) != sorted(stage_ids):
        raise InvalidInput(_("Give every stage of the funnel exactly once to reorder them."))
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
    _check_can_configure(actor)
    errors = {}
    title = (title or "").strip()
    if not title:
        errors["title"] = _("Enter what the owner must do.")
    try:
        minutes = int(due_in_minutes)
        if minutes < 0:
            raise ValueError
    except (TypeError, ValueError):
        errors["due_in_minutes"] = _("Enter a whole number of minutes, 0 or more.")
    if errors:
        raise InvalidInput(_("The task template has errors: fix the marked fields."), fields=errors)
    return TaskTemplate.objects.create(stage=stage, title=title, due_in_minutes=minutes)


@transaction.atomic
def task_template_remove(*, actor: User | None, template: TaskTemplate) -> None:
    """Stop giving this task on entry. Tasks already given stay with their deals."""
    _check_can_configure(actor)
    template.delete()


@transaction.atomic
def loss_reason_add(
    *, actor: User | None, funnel: Funnel, name: str, requires_comment: bool = False
) -> LossReason:
    _check_can_configure(actor)
    name = (name or "").strip()
    if not name:
        raise InvalidInput(_("Enter a loss reason."), fields={"name": _("Enter a loss reason.")})
    if LossReason.objects.filter(funnel=funnel, name=name).exists():
        raise InvalidInput(
            _("The funnel already has the loss reason “%(name)s”.") % {"name": name},
            fields={"name": _("Choose another name.")},
        )
    last = LossReason.objects.filter(funnel=funnel).aggregate(m=Max("position"))["m"]
    return LossReason.objects.create(
        funnel=funnel,
        name=name,
        position=0 if last is None else last + 1,
        requires_comment=requires_comment,
    )


@transaction.atomic
def loss_reason_set_active(*, actor: User | None, reason: LossReason, is_active: bool) -> None:
    """Retire (or bring back) a reason. Deals lost with it keep it."""
    _check_can_configure(actor)
    reason.is_active = is_active
    reason.save(update_fields=["is_active"])


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
    _check_can_configure(actor)
    field = CustomField(funnel=funnel, key=key, label=label, type=type, choices=list(choices or []))
    errors: dict[str, str] = {}
    if type not in CustomFieldType.values:
        errors["type"] = _("Choose one of: %(types)s.") % {
            "types": ", ".join(CustomFieldType.values)
        }
    if CustomField.objects.filter(funnel=funnel, key=key).exists():
        errors["key"] = _("The funnel already has a field with this key.")
    try:
        field.full_clean(exclude=["funnel"])
    except Exception as exc:  # ValidationError from the model
        for name, messages in getattr(exc, "message_dict", {}).items():
            errors.setdefault(name, " ".join(messages))
    if errors:
        raise InvalidInput(_("The custom field has errors: fix the marked fields."), fields=errors)
    last = CustomField.objects.filter(funnel=funnel).aggregate(m=Max("position"))["m"]
    field.position = 0 if last is None else last + 1
    field.save()
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
