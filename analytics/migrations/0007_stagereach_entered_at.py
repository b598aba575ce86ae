import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("analytics", "0006_covering_calendar_indexes")]

    operations = [
        migrations.AddField(
            model_name="stagereach",
            name="entered_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
            preserve_default=False,
        ),
        migrations.RunSQL(
            "UPDATE analytics_stagereach SET entered_at = "
            "(SELECT created_at FROM deals_deal WHERE deals_deal.id = analytics_stagereach.deal_id)",
            migrations.RunSQL.noop,
        ),
        migrations.AddIndex(
            model_name="stagereach",
            index=models.Index(
                fields=["funnel", "entered_at"],
                include=("position", "reached_at"),
                name="stagereach_cohort_idx",
            ),
        ),
    ]
