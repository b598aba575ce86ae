from django.urls import path

from funnels import views

app_name = "funnels"

urlpatterns = [
    path("", views.funnel_list, name="list"),
    path("<int:funnel_id>/", views.funnel_settings, name="settings"),
    path("<int:funnel_id>/stages/", views.stage_add, name="stage_add"),
    path("<int:funnel_id>/stages/order/", views.stages_reorder, name="stages_reorder"),
    path("<int:funnel_id>/stages/<int:stage_id>/", views.stage_edit, name="stage_edit"),
    path("<int:funnel_id>/loss-reasons/", views.loss_reason_add, name="loss_reason_add"),
    path(
        "<int:funnel_id>/loss-reasons/<int:reason_id>/",
        views.loss_reason_toggle,
        name="loss_reason_toggle",
    ),
    path("<int:funnel_id>/custom-fields/", views.custom_field_add, name="custom_field_add"),
    path(
        "<int:funnel_id>/stages/<int:stage_id>/tasks/",
        views.task_template_add,
        name="task_template_add",
    ),
    path(
        "<int:funnel_id>/task-templates/<int:template_id>/remove/",
        views.task_template_remove,
        name="task_template_remove",
    ),
]
