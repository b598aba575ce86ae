from django.db import migrations, models

FINISHED = models.Q(("visit_started_at__isnull", True), ("visits__gt", 0))


class Migration(migrations.Migration):
    """Covering indexes that the funnel engine reads alone: stage time's hold only the
    finished visits (its samples), stage by stage; stage reaches' carry the deal and both dates, one
    orders them by their lag after the deal's entry, and those dated before the entry
    get a (normally empty) index of their own."""

    dependencies = [("analytics", "0007_stagereach_entered_at")]

    operations = [
        migrations.RemoveIndex(model_name="stagereach", name="stagereach_calendar_idx"),
        migrations.RemoveIndex(model_name="stagereach", name="stagereach_cohort_idx"),
        migrations.RemoveIndex(model_name="stagetime", name="stagetime_cohort_idx"),
        migrations.RemoveIndex(model_name="stagetime", name="stagetime_calendar_idx"),
        migrations.AddIndex(
            model_name="stagereach",
            index=models.Index(
                fields=["funnel", "reached_at"],
                include=("position", "entered_at", "deal"),
                name="stagereach_calendar_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="stagereach",
            index=models.Index(
                fields=["funnel", "entered_at"],
                include=("position", "reached_at", "deal"),
                name="stagereach_cohort_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="stagereach",
            index=models.Index(
                models.F("funnel"),
                models.F("reached_at") - models.F("entered_at"),
                include=("position", "entered_at", "deal"),
                name="stagereach_lag_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="stagereach",
            index=models.Index(
                condition=models.Q(("reached_at__lt", models.F("entered_at"))),
                fields=["funnel", "reached_at"],
                include=("position", "entered_at", "deal"),
                name="stagereach_before_entry_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="stagetime",
            index=models.Index(
                condition=FINISHED,
                fields=["funnel", "stage", "last_left_at"],
                include=("owner", "seconds", "deal"),
                name="stagetime_calendar_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="stagetime",
            index=models.Index(
                condition=FINISHED,
                fields=["funnel", "stage", "entered_at"],
                include=("owner", "seconds", "deal"),
                name="stagetime_cohort_idx",
            ),
        ),
    ]
