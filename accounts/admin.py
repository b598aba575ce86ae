from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.utils.translation import gettext_lazy as _

from accounts.models import ApiKey, ApiScope, Team, User
from accounts.services import api_key_changed, api_key_revoke, api_key_set_secret


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "first_name", "last_name", "role", "team", "is_away", "is_active")
    list_filter = ("role", "team", "is_away", "is_active")
    fieldsets = (
        *BaseUserAdmin.fieldsets,
        (_("Sales"), {"fields": ("role", "team", "is_away")}),
    )
    add_fieldsets = (
        *BaseUserAdmin.add_fieldsets,
        (_("Sales"), {"fields": ("first_name", "last_name", "role", "team")}),
    )


class MemberInline(admin.TabularInline):
    model = User
    fields = ("username", "first_name", "last_name", "role", "is_away")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "head")
    inlines = [MemberInline]


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        label=_("scopes"), choices=ApiScope.choices, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = ApiKey
        fields = ("name", "user", "funnel", "scopes", "attach_duplicates")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created here or with ``manage.py create_api_key``; the key is shown once."""

    form = ApiKeyForm
    list_display = ("name", "prefix", "user", "funnel", "created_at", "last_used_at", "revoked_at")
    list_filter = ("funnel",)
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            raw_key = api_key_set_secret(obj)
            messages.warning(
                request,
                _("Copy the key now, it is not shown again: %(key)s") % {"key": raw_key},
            )
        super().save_model(request, obj, form, change)
        if change:
            api_key_changed(api_key=obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: the key's use stays on record

    @admin.action(description=_("Revoke the selected keys"))
    def revoke(self, request, queryset) -> None:
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        messages.success(request, _("Revoked."))
