"""Admin for deals. Stage and status go through the service functions only:
the admin shows them and the history read-only, and edits the other fields
through ``deal_update`` so the same rules apply."""

from django.contrib import admin, messages
from django.db import models
from django.utils.translation import gettext_lazy as _

from crm.errors import DomainError
from deals.models import (
    Contact,
    Deal,
    Note,
    StageChange,
    StatusChange,
    Task,
    WebhookDelivery,
    WebhookSubscription,
)
from deals.services import EDITABLE_FIELDS, deal_update
from deals.webhooks import webhook_subscription_enable


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class StageChangeInline(ReadOnlyInline):
    model = StageChange
    fields = ("at", "from_stage", "to_stage", "actor")
    readonly_fields = fields


class StatusChangeInline(ReadOnlyInline):
    model = StatusChange
    fields = (
        "at",
        "from_status",
        "to_status",
        "stage",
        "loss_reason",
        "comment",
        "next_contact_at",
        "actor",
    )
    readonly_fields = fields


class TaskInline(ReadOnlyInline):
    model = Task
    fields = ("title", "assignee", "due_at", "done_at")
    readonly_fields = fields


class NoteInline(ReadOnlyInline):
    model = Note
    fields = ("created_at", "author", "text")
    readonly_fields = fields


@admin.register(Deal)
class DealAdmin(admin.ModelAdmin):
    list_display = ("title", "funnel", "stage", "status", "owner", "amount", "created_at")
    list_filter = ("funnel", "status", "stage", "temperature", "source")
    search_fields = ("title", "contact__name", "contact__phone", "contact__email", "external_id")
    list_select_related = ("funnel", "stage", "owner")
    raw_id_fields = ("contact",)
    readonly_fields = (
        "funnel",
        "stage",
        "status",
        "owner",
        "contact",
        "loss_reason",
        "loss_comment",
        "next_contact_at",
        "created_at",
        "stage_entered_at",
        "closed_at",
        "updated_at",
        "version",
        "external_id",
    )
    inlines = [StageChangeInline, StatusChangeInline, TaskInline, NoteInline]

    def has_add_permission(self, request) -> bool:
        # New deals come from the board, the API or the importer, which apply the funnel rules.
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        values = {
            name: form.cleaned_data[name] for name in form.changed_data if name in EDITABLE_FIELDS
        }
        try:
            deal_update(actor=request.user, deal=obj.pk, values=values)
        except DomainError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)


class HistoryAdmin(admin.ModelAdmin):
    """Immutable history: listed and shown, never added, changed or deleted."""

    list_select_related = True

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(StageChange)
class StageChangeAdmin(HistoryAdmin):
    list_display = ("deal", "from_stage", "to_stage", "at", "actor")
    list_filter = ("to_stage__funnel",)


@admin.register(StatusChange)
class StatusChangeAdmin(HistoryAdmin):
    list_display = ("deal", "from_status", "to_status", "loss_reason", "at", "actor")
    list_filter = ("to_status", "loss_reason")


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ("name", "company", "phone", "email", "created_at")
    search_fields = ("name", "company", "phone", "email")


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("title", "deal", "assignee", "due_at", "done_at")
    list_filter = ("done_at",)
    raw_id_fields = ("deal",)


@admin.register(Note)
class NoteAdmin(admin.ModelAdmin):
    list_display = ("deal", "author", "created_at")
    raw_id_fields = ("deal",)


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    list_display = ("url", "events", "funnel", "is_active", "failure_count", "disabled_at")
    list_filter = ("is_active", "funnel")
    search_fields = ("url",)
    readonly_fields = ("failure_count", "disabled_at", "created_at")
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    actions = ["enable"]

    @admin.action(description=_("Enable and forget past failures"))
    def enable(self, request, queryset) -> None:
        for subscription_id in queryset.values_list("pk", flat=True):
            webhook_subscription_enable(subscription_id=subscription_id)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(HistoryAdmin):
    """The delivery log: written by the delivery task only."""

    list_display = ("created_at", "subscription", "event", "status", "attempts", "response_code")
    list_filter = ("status", "event")
    raw_id_fields = ("subscription",)
