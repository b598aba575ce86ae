"""HTML views of the managers' workspace: the board, the deal card, new deal, my tasks.

Each view parses its input, calls one service function or selector, and
renders. Board actions answer HTMX/fetch requests (``HX-Request``) with
partials: the moved card (200), or a dialog with the service's message and the
inputs it asks for, under the DomainError's status (400, 403, 404, 409). The
same actions posted from the deal card's plain forms redirect back, or show
the page again with the dialog inline.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import User
from crm.errors import Conflict, DomainError, Forbidden, InvalidInput
from deals import services
from deals.forms import deal_form_inputs, deal_values_from_post, dialog_inputs
from deals.models import Deal, DealStatus, Temperature
from deals.selectors import (
    BOARD_COLUMN_LIMIT,
    BoardFilters,
    board_card,
    board_choices,
    board_column_page,
    deal_for_user,
    deal_open_tasks,
    deal_timeline,
    deals_for_board,
    deals_visible_to,
    funnels_for_user,
    tasks_for_user,
)
from funnels.models import Stage

# ---------------------------------------------------------------- helpers


def _is_partial(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _deal_or_404(request: HttpRequest, deal_id: int) -> Deal:
    deal = deal_for_user(user=request.user, deal_id=deal_id)
    if deal is None:
        raise Http404(_("No such deal, or it is not yours."))
    return deal


def _version(request: HttpRequest) -> int | None:
    raw = request.POST.get("version", "")
    return int(raw) if raw.isdigit() else None


def _dialog(
    request: HttpRequest,
    deal: Deal,
    action: str,
    *,
    error: DomainError | None = None,
    status: int = 200,
) -> HttpResponse:
    """The dialog of a board action, asking for what the service said was missing."""
    context = _dialog_context(request, deal, action, error)
    response = render(request, "deals/_dialog.html", context, status=status)
    response["X-Deal-Outcome"] = error.code if error else "ask"
    return response


def _dialog_context(
    request: HttpRequest, deal: Deal, action: str, error: DomainError | None
) -> dict:
    post = request.POST if request.method == "POST" else None
    fields = error.fields if isinstance(error, InvalidInput) else {}
    context = {
        "deal": deal,
        "action": action,
        "action_url": reverse(f"deals:{action}", args=[deal.pk]),
        "error": error,
        "is_conflict": isinstance(error, Conflict),
        "field_errors": fields,
        "version": (post or {}).get("version", deal.version),
        "stage_id": (post or {}).get("stage", ""),
        "stage": None,
        "inputs": [],
    }
    if action in ("move", "win"):
        context["inputs"] = dialog_inputs(deal, fields, post)
        if action == "move" and context["stage_id"]:
            context["stage"] = deal.funnel.stages.filter(pk=context["stage_id"]).first()
    if action == "lose":
        context["reasons"] = list(deal.funnel.loss_reasons.filter(is_active=True))
        context["loss_reason"] = (post or {}).get("loss_reason", "")
        context["loss_comment"] = (post or {}).get("loss_comment", "")
    if action == "postpone":
        context["next_contact_at"] = (post or {}).get("next_contact_at", "")
        context["comment"] = (post or {}).get("comment", "")
    return context


def _outcome(request: HttpRequest, deal: Deal, action: str, run) -> HttpResponse:
    """Run one service call and answer the board (partial) or the deal card (page)."""
    try:
        deal = run()
    except DomainError as error:
        if _is_partial(request):
            return _dialog(request, deal, action, error=error, status=error.http_status)
        return _deal_page(
            request,
            deal_for_user(user=request.user, deal_id=deal.pk) or deal,
            status=error.http_status,
            action_dialog=render_to_string(
                "deals/_dialog.html",
                {**_dialog_context(request, deal, action, error), "inline": True},
                request=request,
            ),
        )
    if _is_partial(request):
        card = board_card(user=request.user, deal_id=deal.pk)
        if card is None or card.status != DealStatus.OPEN:
            response = HttpResponse("")
            response["X-Deal-Outcome"] = "removed"
            return response
        response = render(request, "deals/_card.html", {"deal": card})
        response["X-Deal-Outcome"] = "ok"
        return response
    messages.success(request, _("Saved."))
    return redirect("deals:detail", deal.pk)


def _deal_page(request: HttpRequest, deal: Deal, *, status: int = 200, **extra) -> HttpResponse:
    custom_fields = list(deal.funnel.custom_fields.all())
    form_errors = extra.pop("form_errors", {})
    form_post = extra.pop("form_post", None)
    context = {
        "deal": deal,
        "timeline": deal_timeline(deal),
        "open_tasks": deal_open_tasks(deal),
        "stages": list(deal.funnel.stages.order_by("position")),
        "reasons": list(deal.funnel.loss_reasons.filter(is_active=True)),
        "inputs": deal_form_inputs(deal, custom_fields, form_errors, form_post),
        "assignees": list(
            deal.funnel.members.filter(is_active=True).order_by("first_name", "last_name")
        ),
        "now": timezone.now(),
        **extra,
    }
    return render(request, "deals/deal_detail.html", context, status=status)


# ---------------------------------------------------------------- the board


@login_required
@require_GET
def board_default(request: HttpRequest) -> HttpResponse:
    """The user's first funnel's board."""
    funnel = funnels_for_user(request.user).first()
    if funnel is None:
        return render(request, "deals/no_funnels.html")
    return redirect("deals:board", funnel.pk)


@login_required
@require_GET
def board(request: HttpRequest, funnel_id: int) -> HttpResponse:
    funnel = funnels_for_user(request.user).filter(pk=funnel_id).first()
    if funnel is None:
        raise Http404(_("No such funnel, or you do not work it."))
    filters = BoardFilters.from_query(request.user, request.GET)
    return render(
        request,
        "deals/board.html",
        {
            "board": deals_for_board(user=request.user, funnel=funnel, filters=filters),
            "choices": board_choices(user=request.user, funnel=funnel),
            "temperatures": Temperature.choices,
            "filter_query": urlencode(filters.as_query()),
        },
    )


@login_required
@require_GET
def board_column(request: HttpRequest, stage_id: int) -> HttpResponse:
    """More cards of one column ("load more" on scroll)."""
    stage = Stage.objects.select_related("funnel").filter(pk=stage_id).first()
    if stage is None or not funnels_for_user(request.user).filter(pk=stage.funnel_id).exists():
        raise Http404(_("No such stage."))
    offset = int(request.GET["offset"]) if request.GET.get("offset", "").isdigit() else 0
    filters = BoardFilters.from_query(request.user, request.GET)
    cards, has_more = board_column_page(
        user=request.user, stage=stage, filters=filters, offset=offset
    )
    return render(
        request,
        "deals/_column_cards.html",
        {
            "cards": cards,
            "stage": stage,
            "has_more": has_more,
            "next_offset": offset + BOARD_COLUMN_LIMIT,
            "filter_query": urlencode(filters.as_query()),
        },
    )


@login_required
@require_GET
def card(request: HttpRequest, deal_id: int) -> HttpResponse:
    """One board card, fresh (after a conflict)."""
    deal = board_card(user=request.user, deal_id=deal_id)
    if deal is None:
        raise Http404(_("No such deal, or it is not yours."))
    response = render(request, "deals/_card.html", {"deal": deal})
    response["X-Deal-Status"] = deal.status
    return response


# ---------------------------------------------------------------- moves and statuses


@login_required
@require_POST
def deal_move(request: HttpRequest, deal_id: int) -> HttpResponse:
    deal = _deal_or_404(request, deal_id)
    stage_id = request.POST.get("stage", "")
    stage = Stage.objects.filter(pk=stage_id if stage_id.isdigit() else None).first()

    def run():
        if stage is None:
            raise InvalidInput(
                _("Choose a stage to move the deal to."),
                fields={"stage": _("Choose a stage.")},
            )
        return services.deal_move_to_stage(
            actor=request.user,
            deal=deal,
            stage=stage,
            values=deal_values_from_post(request.POST),
            expected_version=_version(request),
        )

    return _outcome(request, deal, "move", run)


@login_required
@require_POST
def deal_win(request: HttpRequest, deal_id: int) -> HttpResponse:
    deal = _deal_or_404(request, deal_id)
    return _outcome(
        request,
        deal,
        "win",
        lambda: services.deal_win(
            actor=request.user,
            deal=deal,
            values=deal_values_from_post(request.POST),
            expected_version=_version(request),
        ),
    )


@login_required
@require_http_methods(["GET", "POST"])
def deal_lose(request: HttpRequest, deal_id: int) -> HttpResponse:
    deal = _deal_or_404(request, deal_id)
    if request.method == "GET":
        return _dialog(request, deal, "lose")
    return _outcome(
        request,
        deal,
        "lose",
        lambda: services.deal_lose(
            actor=request.user,
            deal=deal,
            loss_reason=request.POST.get("loss_reason") or None,
            comment=request.POST.get("loss_comment", ""),
            expected_version=_version(request),
        ),
    )


@login_required
@require_http_methods(["GET", "POST"])
def deal_postpone(request: HttpRequest, deal_id: int) -> HttpResponse:
    deal = _deal_or_404(request, deal_id)
    if request.method == "GET":
        return _dialog(request, deal, "postpone")
    return _outcome(
        request,
        deal,
        "postpone",
        lambda: services.deal_postpone(
            actor=request.user,
            deal=deal,
            next_contact_at=request.POST.get("next_contact_at") or None,
            comment=request.POST.get("comment", ""),
            expected_version=_version(request),
        ),
    )


@login_required
@require_POST
def deal_reopen(request: HttpRequest, deal_id: int) -> HttpResponse:
    deal = _deal_or_404(request, deal_id)
    return _outcome(
        request,
        deal,
        "reopen",
        lambda: services.deal_reopen(
            actor=request.user, deal=deal, expected_version=_version(request)
        ),
    )


@login_required
@require_POST
def deal_assign(request: HttpRequest, deal_id: int) -> HttpResponse:
    deal = _deal_or_404(request, deal_id)
    raw = request.POST.get("owner", "")
    owner = User.objects.filter(pk=raw).first() if raw.isdigit() else None
    if raw and owner is None:
        raise Http404(_("No such user."))
    try:
        services.deal_assign(
            actor=request.user, deal=deal, owner=owner, expected_version=_version(request)
        )
    except DomainError as error:
        return _deal_page(
            request, _deal_or_404(request, deal_id), status=error.http_status, assign_error=error
        )
    messages.success(request, _("The deal is reassigned."))
    if not deals_visible_to(request.user).filter(pk=deal.pk).exists():
        return redirect("deals:board", deal.funnel_id)  # handed over: no longer his to see
    return redirect("deals:detail", deal.pk)


# ---------------------------------------------------------------- the deal card


@login_required
@require_GET
def deal_detail(request: HttpRequest, deal_id: int) -> HttpResponse:
    return _deal_page(request, _deal_or_404(request, deal_id))


@login_required
@require_POST
def deal_edit(request: HttpRequest, deal_id: int) -> HttpResponse:
    deal = _deal_or_404(request, deal_id)
    try:
        services.deal_update(
            actor=request.user,
            deal=deal,
            values=deal_values_from_post(request.POST),
            expected_version=_version(request),
        )
    except DomainError as error:
        return _deal_page(
            request,
            _deal_or_404(request, deal_id),
            status=error.http_status,
            form_error=error,
            form_errors=error.fields,
            form_post=None if isinstance(error, Conflict) else request.POST,
        )
    messages.success(request, _("The deal is saved."))
    return redirect("deals:detail", deal.pk)


@login_required
@require_POST
def task_add(request: HttpRequest, deal_id: int) -> HttpResponse:
    deal = _deal_or_404(request, deal_id)
    try:
        services.task_create(
            actor=request.user,
            deal=deal,
            title=request.POST.get("title", ""),
            due_at=request.POST.get("due_at", ""),
        )
    except DomainError as error:
        return _deal_page(
            request, deal, status=error.http_status, task_error=error, task_post=request.POST
        )
    messages.success(request, _("The task is added."))
    return redirect("deals:detail", deal.pk)


@login_required
@require_POST
def task_done(request: HttpRequest, task_id: int) -> HttpResponse:
    try:
        task = services.task_complete(actor=request.user, task=task_id)
    except Forbidden as error:
        raise PermissionDenied(error.message) from error
    except DomainError as error:
        raise Http404(error.message) from error
    messages.success(request, _("The task “%(title)s” is done.") % {"title": task.title})
    next_url = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(next_url)
    return redirect("deals:detail", task.deal_id)


@login_required
@require_POST
def note_add(request: HttpRequest, deal_id: int) -> HttpResponse:
    deal = _deal_or_404(request, deal_id)
    try:
        services.note_add(actor=request.user, deal=deal, text=request.POST.get("text", ""))
    except DomainError as error:
        return _deal_page(request, deal, status=error.http_status, note_error=error)
    return redirect("deals:detail", deal.pk)


# ---------------------------------------------------------------- new deal, my tasks


@login_required
@require_http_methods(["GET", "POST"])
def deal_new(request: HttpRequest) -> HttpResponse:
    funnels = list(funnels_for_user(request.user))
    data = request.POST if request.method == "POST" else request.GET
    funnel_id = data.get("funnel", "")
    funnel = next((f for f in funnels if str(f.pk) == funnel_id), funnels[0] if funnels else None)
    context = {"funnels": funnels, "funnel": funnel, "post": data, "error": None}
    if request.method == "POST" and funnel is not None:
        try:
            deal = services.deal_create(
                actor=request.user,
                funnel=funnel,
                title=request.POST.get("title", ""),
                owner=request.user,
                values={
                    key: value
                    for key, value in deal_values_from_post(request.POST).items()
                    if key != "title"
                },
            )
        except DomainError as error:
            context["error"] = error
            return render(request, "deals/deal_new.html", context, status=error.http_status)
        messages.success(request, _("The deal “%(title)s” is created.") % {"title": deal.title})
        return redirect("deals:detail", deal.pk)
    return render(request, "deals/deal_new.html", context)


@login_required
@require_GET
def my_tasks(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "deals/my_tasks.html",
        {"tasks": tasks_for_user(user=request.user), "now": timezone.now()},
    )
