from django.contrib import admin

from funnels.models import CustomField, Funnel, LossReason, Stage, TaskTemplate


class StageInline(admin.TabularInline):
    model = Stage
    fields = (
        "position",
        "name",
        "probability",
        "rotting_days",
        "target_conversion",
        "required_fields",
    )
    extra = 0
    show_change_link = True


class LossReasonInline(admin.TabularInline):
    model = LossReason
    fields = ("position", "name", "is_active", "requires_comment")
    extra = 0


class CustomFieldInline(admin.TabularInline):
    model = CustomField
    fields = ("position", "key", "label", "type", "choices")
    extra = 0


@admin.register(Funnel)
class FunnelAdmin(admin.ModelAdmin):
    list_display = ("name", "is_active", "currency", "target_response_minutes")
    list_filter = ("is_active",)
    filter_horizontal = ("members",)
    inlines = [StageInline, LossReasonInline, CustomFieldInline]


class TaskTemplateInline(admin.TabularInline):
    model = TaskTemplate
    fields = ("title", "due_in_minutes")
    extra = 0


@admin.register(Stage)
class StageAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "funnel",
        "position",
        "probability",
        "rotting_days",
        "target_conversion",
    )
    list_filter = ("funnel",)
    inlines = [TaskTemplateInline]

    def has_delete_permission(self, request, obj=None) -> bool:
        # A stage with deals or history is kept: deleting it would rewrite history.
        return obj is None or not obj.deals.exists()


@admin.register(LossReason)
class LossReasonAdmin(admin.ModelAdmin):
    list_display = ("name", "funnel", "position", "is_active", "requires_comment")
    list_filter = ("funnel", "is_active")


@admin.register(CustomField)
class CustomFieldAdmin(admin.ModelAdmin):
    list_display = ("label", "key", "type", "funnel")
    list_filter = ("funnel", "type")
