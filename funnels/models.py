from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

# Deal fields a stage may require, with the label a manager sees in errors.
# Custom fields of the funnel can be required too, by their key.
REQUIRABLE_DEAL_FIELDS = {
    "amount": _("Amount"),
    "contact": _("Client"),
    "contact_phone": _("Client phone"),
    "contact_email": _("Client email"),
    "company": _("Company"),
    "source": _("Source"),
    "product": _("Product"),
    "region": _("Region"),
    "temperature": _("Temperature"),
    "expected_close_date": _("Expected close date"),
}

# Loss reasons of seed 003, given to every new funnel.
DEFAULT_LOSS_REASONS = [
    _("Spam"),
    _("Bought from a competitor"),
    _("Changed their mind"),
    _("Terms or timing did not fit"),
    _("Was only comparing"),
]
OTHER_LOSS_REASON = _("Other")


class Funnel(models.Model):
    name = models.CharField(_("name"), max_length=120, unique=True)
    is_active = models.BooleanField(_("active"), default=True)
    currency = models.CharField(_("currency"), max_length=3, default="RUB")
    target_response_minutes = models.PositiveIntegerField(
        _("target response time, minutes"),
        default=2,
        help_text=_("Answer a new lead within this time (seed advice: 1–2 minutes)."),
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        verbose_name=_("members"),
        blank=True,
        related_name="funnels",
        help_text=_("The managers who work this funnel."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("funnel")
        verbose_name_plural = _("funnels")

    def __str__(self) -> str:
        return self.name

    def first_stage(self) -> "Stage":
        return self.stages.order_by("position").first()


class Stage(models.Model):
    """An open stage of a funnel. Won and lost are statuses, not stages."""

    funnel = models.ForeignKey(
        Funnel, verbose_name=_("funnel"), on_delete=models.CASCADE, related_name="stages"
    )
    name = models.CharField(_("name"), max_length=120)
    position = models.PositiveIntegerField(_("position"))
    probability = models.PositiveSmallIntegerField(
        _("probability, %"), default=0, help_text=_("Chance that a deal here is won, 0–100.")
    )
    rotting_days = models.PositiveIntegerField(
        _("rotting threshold, days"),
        null=True,
        blank=True,
        help_text=_("A deal longer than this in the stage is stuck."),
    )
    target_conversion = models.DecimalField(
        _("target step conversion, %"), max_digits=5, decimal_places=2, null=True, blank=True
    )
    required_fields = models.JSONField(
        _("required fields"),
        default=list,
        blank=True,
        help_text=_("Deal fields (or custom field keys) that must be filled to enter the stage."),
    )

    class Meta:
        ordering = ["funnel", "position"]
        verbose_name = _("stage")
        verbose_name_plural = _("stages")
        constraints = [
            models.UniqueConstraint(
                fields=["funnel", "position"], name="stage_unique_position_per_funnel"
            ),
            models.CheckConstraint(
                condition=Q(probability__gte=0) & Q(probability__lte=100),
                name="stage_probability_0_100",
            ),
            models.CheckConstraint(
                condition=Q(target_conversion__isnull=True)
                | (Q(target_conversion__gte=0) & Q(target_conversion__lte=100)),
                name="stage_target_conversion_0_100",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.funnel.name}: {self.name}"

    def clean(self) -> None:
        if self.probability is not None and self.probability > 100:
            raise ValidationError({"probability": _("Probability is a percentage from 0 to 100.")})
        if self.funnel_id:
            unknown = unknown_required_fields(self.funnel, self.required_fields or [])
            if unknown:
                raise ValidationError(
                    {
                        "required_fields": _("Unknown fields: %(fields)s.")
                        % {"fields": ", ".join(unknown)}
                    }
                )


def unknown_required_fields(funnel: Funnel, names: list) -> list[str]:
    """The names in ``names`` that are neither deal fields nor the funnel's custom fields."""
    if not isinstance(names, list):
        return [str(names)]
    custom = set(funnel.custom_fields.values_list("key", flat=True)) if funnel.pk else set()
    return [str(n) for n in names if n not in REQUIRABLE_DEAL_FIELDS and n not in custom]


class TaskTemplate(models.Model):
    """A task given to the deal's owner whenever a deal enters the stage."""

    stage = models.ForeignKey(
        Stage, verbose_name=_("stage"), on_delete=models.CASCADE, related_name="task_templates"
    )
    title = models.CharField(_("title"), max_length=200)
    due_in_minutes = models.PositiveIntegerField(
        _("due in, minutes"), default=60, help_text=_("Counted from the moment the deal enters.")
    )

    class Meta:
        ordering = ["stage", "id"]
        verbose_name = _("task template")
        verbose_name_plural = _("task templates")

    def __str__(self) -> str:
        return self.title


class LossReason(models.Model):
    funnel = models.ForeignKey(
        Funnel, verbose_name=_("funnel"), on_delete=models.CASCADE, related_name="loss_reasons"
    )
    name = models.CharField(_("name"), max_length=200)
    position = models.PositiveIntegerField(_("position"), default=0)
    is_active = models.BooleanField(
        _("active"), default=True, help_text=_("Retired reasons stay on past deals.")
    )
    requires_comment = models.BooleanField(_("requires a comment"), default=False)

    class Meta:
        ordering = ["funnel", "position", "id"]
        verbose_name = _("loss reason")
        verbose_name_plural = _("loss reasons")
        constraints = [
            models.UniqueConstraint(fields=["funnel", "name"], name="loss_reason_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name


class CustomFieldType(models.TextChoices):
    TEXT = "text", _("Text")
    NUMBER = "number", _("Number")
    DATE = "date", _("Date")
    CHOICE = "choice", _("Choice")


class CustomField(models.Model):
    funnel = models.ForeignKey(
        Funnel, verbose_name=_("funnel"), on_delete=models.CASCADE, related_name="custom_fields"
    )
    key = models.SlugField(_("key"), max_length=60)
    label = models.CharField(_("label"), max_length=120)
    type = models.CharField(_("type"), max_length=10, choices=CustomFieldType.choices)
    choices = models.JSONField(_("choices"), default=list, blank=True)
    position = models.PositiveIntegerField(_("position"), default=0)

    class Meta:
        ordering = ["funnel", "position", "id"]
        verbose_name = _("custom field")
        verbose_name_plural = _("custom fields")
        constraints = [
            models.UniqueConstraint(fields=["funnel", "key"], name="custom_field_unique_key"),
        ]

    def __str__(self) -> str:
        return self.label

    def clean(self) -> None:
        if self.key in REQUIRABLE_DEAL_FIELDS:
            raise ValidationError({"key": _("This key is taken by a built-in deal field.")})
        if self.type == CustomFieldType.CHOICE and not self.choices:
            raise ValidationError({"choices": _("A choice field needs at least one choice.")})
