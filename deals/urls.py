from django.urls import path

from deals import views

app_name = "deals"

urlpatterns = [
    path("board/", views.board_default, name="board_default"),
    path("board/<int:funnel_id>/", views.board, name="board"),
    path("board/column/<int:stage_id>/", views.board_column, name="board_column"),
    path("deals/new/", views.deal_new, name="new"),
    path("deals/<int:deal_id>/", views.deal_detail, name="detail"),
    path("deals/<int:deal_id>/card/", views.card, name="card"),
    path("deals/<int:deal_id>/edit/", views.deal_edit, name="edit"),
    path("deals/<int:deal_id>/move/", views.deal_move, name="move"),
    path("deals/<int:deal_id>/win/", views.deal_win, name="win"),
    path("deals/<int:deal_id>/lose/", views.deal_lose, name="lose"),
    path("deals/<int:deal_id>/postpone/", views.deal_postpone, name="postpone"),
    path("deals/<int:deal_id>/reopen/", views.deal_reopen, name="reopen"),
    path("deals/<int:deal_id>/assign/", views.deal_assign, name="assign"),
    path("deals/<int:deal_id>/tasks/", views.task_add, name="task_add"),
    path("deals/<int:deal_id>/notes/", views.note_add, name="note_add"),
    path("tasks/", views.my_tasks, name="my_tasks"),
    path("tasks/<int:task_id>/done/", views.task_done, name="task_done"),
]
