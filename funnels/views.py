"""HTML views of funnel settings, for administrators and heads of sales.

Each POST parses its form and calls one function of ``funnels.services``, which
checks the actor's role and the rules; a ``DomainError`` shows the settings
page again with the message.
"""

from decimal import Decimal, InvalidOperation

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from crm.errors import DomainError, Forbidden, InvalidInput
from funnels import services
from funnels.models import (
    REQUIRABLE_DEAL_FIELDS,
    CustomFieldType,
    Funnel,
    LossReason,
    Stage,
    TaskTemplate,
)
from funnels.selectors import funnel_with_settings, funnels_for_settings


def _check_can_configure(request: HttpRequest) -> None:
    """The services' role rule, applied to the pages themselves (a 403 page)."""
    try:
        services.funnels_check_configurer(request.user)
    except Forbidden as exc:
        raise PermissionDenied(exc.message) from None


def _number(raw: str, name: str, *, decimal: bool = False):
    raw = (raw or "").strip().replace(",", ".")
    if raw == "":
        return None
    try:
        return Decimal(raw) if decimal else int(raw)
    except (InvalidOperation, ValueError):
        raise InvalidInput(
            _("“%(value)s” is not a number.") % {"value": raw},
            fields={name: _("Enter a number.")},
        ) from None


def _stage_values(post) -> dict:
    return {
        "name": post.get("name", ""),
        "probability": _number(post.get("probability"), "probability") or 0,
        "rotting_days": _number(post.get("rotting_days"), "rotting_days"),
        "target_conversion": _number(
            post.get("target_conversion"), "target_conversion", decimal=True
        ),
        "required_fields": post.getlist("required_fields"),
    }


def _settings_page(
    request: HttpRequest, funnel_id: int, *, error: DomainError | None = None
) -> HttpResponse:
    funnel = funnel_with_settings(funnel_id)
    if funnel is None:
        raise Http404(_("No such funnel."))
    requirable = [(name, str(label)) for name, label in REQUIRABLE_DEAL_FIELDS.items()] + [
        (field.key, field.label) for field in funnel.custom_fields.all()
    ]
    return render(
        request,
        "funnels/funnel_settings.html",
        {
            "funnel": funnel,
            "requirable": requirable,
            "field_types": CustomFieldType.choices,
            "error": error,
        },
        status=error.http_status if error else 200,
    )


def _done(request: HttpRequest, funnel_id: int, message: str) -> HttpResponse:
    messages.success(request, message)
    return redirect("funnels:settings", funnel_id)


@login_required
@require_http_methods(["GET", "POST"])
def funnel_list(request: HttpRequest) -> HttpResponse:
    _check_can_configure(request)
    error = None
    if request.method == "POST":
        stages = [line.strip() for line in request.POST.get("stages", "").splitlines()]
        try:
            funnel = services.funnel_create(
                actor=request.user,
                name=request.POST.get("name", ""),
                stages=[name for name in stages if name],
            )
        except DomainError as exc:
            error = exc
        else:
            return _done(
                request, funnel.pk, _("The funnel “%(name)s” is created.") % {"name": funnel.name}
            )
    return render(
        request,
        "funnels/funnel_list.html",
        {"funnels": funnels_for_settings(), "error": error, "post": request.POST},
        status=error.http_status if error else 200,
    )


@login_required
@require_GET
def funnel_settings(request: HttpRequest, funnel_id: int) -> HttpResponse:
    _check_can_configure(request)
    return _settings_page(request, funnel_id)


def _funnel_or_404(funnel_id: int) -> Funnel:
    funnel = Funnel.objects.filter(pk=funnel_id).first()
    if funnel is None:
        raise Http404(_("No such funnel."))
    return funnel


@login_required
@require_POST
def stage_add(request: HttpRequest, funnel_id: int) -> HttpResponse:
    _check_can_configure(request)
    funnel = _funnel_or_404(funnel_id)
    try:
        values = _stage_values(request.POST)
        task_title = request.POST.get("task_title", "").strip()
        due = _number(request.POST.get("task_due_in_minutes"), "task_due_in_minutes")
        due = 60 if due is None else due  # 0 is a task due at once
        services.stage_add(
            actor=request.user,
            funnel=funnel,
            tasks=[(task_title, due)] if task_title else [],
            **values,
        )
    except DomainError as exc:
        return _settings_page(request, funnel_id, error=exc)
    return _done(request, funnel_id, _("The stage is added."))


@login_required
@require_POST
def stage_edit(request: HttpRequest, funnel_id: int, stage_id: int) -> HttpResponse:
    _check_can_configure(request)
    stage = Stage.objects.select_related("funnel").filter(pk=stage_id, funnel_id=funnel_id).first()
    if stage is None:
        raise Http404(_("No such stage."))
    try:
        services.stage_update(actor=request.user, stage=stage, **_stage_values(request.POST))
    except DomainError as exc:
        return _settings_page(request, funnel_id, error=exc)
    return _done(request, funnel_id, _("The stage “%(name)s” is saved.") % {"name": stage.name})


@login_required
@require_POST
def stages_reorder(request: HttpRequest, funnel_id: int) -> HttpResponse:
    _check_can_configure(request)
    funnel = _funnel_or_404(funnel_id)
    ids = request.POST.getlist("stage_ids")
    try:
        services.stages_reorder(
            actor=request.user,
            funnel=funnel,
            stage_ids=[int(i) for i in ids if i.isdigit()],
        )
    except DomainError as exc:
        return _settings_page(request, funnel_id, error=exc)
    return _done(request, funnel_id, _("The stages are reordered."))


@login_required
@require_POST
def loss_reason_add(request: HttpRequest, funnel_id: int) -> HttpResponse:
    _check_can_configure(request)
    funnel = _funnel_or_404(funnel_id)
    try:
        services.loss_reason_add(
            actor=request.user,
            funnel=funnel,
            name=request.POST.get("name", ""),
            requires_comment=request.POST.get("requires_comment") == "on",
        )
    except DomainError as exc:
        return _settings_page(request, funnel_id, error=exc)
    return _done(request, funnel_id, _("The loss reason is added."))


@login_required
@require_POST
def loss_reason_toggle(request: HttpRequest, funnel_id: int, reason_id: int) -> HttpResponse:
    _check_can_configure(request)
    reason = LossReason.objects.filter(pk=reason_id, funnel_id=funnel_id).first()
    if reason is None:
        raise Http404(_("No such loss reason."))
    try:
        services.loss_reason_set_active(
            actor=request.user, reason=reason, is_active=request.POST.get("is_active") == "true"
        )
    except DomainError as exc:
        return _settings_page(request, funnel_id, error=exc)
    return _done(request, funnel_id, _("The loss reason is saved."))


@login_required
@require_POST
def custom_field_add(request: HttpRequest, funnel_id: int) -> HttpResponse:
    _check_can_configure(request)
    funnel = _funnel_or_404(funnel_id)
    choices = [c.strip() for c in request.POST.get("choices", "").split(",") if c.strip()]
    try:
        services.custom_field_add(
            actor=request.user,
            funnel=funnel,
            key=request.POST.get("key", "").strip(),
            label=request.POST.get("label", "").strip(),
            type=request.POST.get("type", ""),
            choices=choices,
        )
    except DomainError as exc:
        return _settings_page(request, funnel_id, error=exc)
    return _done(request, funnel_id, _("The custom field is added."))


@login_required
@require_POST
def task_template_add(request: HttpRequest, funnel_id: int, stage_id: int) -> HttpResponse:
    _check_can_configure(request)
    stage = Stage.objects.filter(pk=stage_id, funnel_id=funnel_id).first()
    if stage is None:
        raise Http404(_("No such stage."))
    try:
        services.task_template_add(
            actor=request.user,
            stage=stage,
            title=request.POST.get("title", ""),
            due_in_minutes=request.POST.get("due_in_minutes", ""),
        )
    except DomainError as exc:
        return _settings_page(request, funnel_id, error=exc)
    return _done(request, funnel_id, _("The task template is added."))


@login_required
@require_POST
def task_template_remove(request: HttpRequest, funnel_id: int, template_id: int) -> HttpResponse:
    _check_can_configure(request)
    template = TaskTemplate.objects.filter(pk=template_id, stage__funnel_id=funnel_id).first()
    if template is None:
        raise Http404(_("No such task template."))
    try:
        services.task_template_remove(actor=request.user, template=template)
    except DomainError as exc:
        return _settings_page(request, funnel_id, error=exc)
    return _done(request, funnel_id, _("The task template is removed."))
