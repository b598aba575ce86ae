import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("analytics", "0004_covering_stagetime_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="stagetime",
            name="owner",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunSQL(
            "UPDATE analytics_stagetime SET owner_id = "
            "(SELECT owner_id FROM deals_deal WHERE deals_deal.id = analytics_stagetime.deal_id)",
            migrations.RunSQL.noop,
        ),
        migrations.RemoveIndex(model_name="stagetime", name="stagetime_cohort_idx"),
        migrations.AddIndex(
            model_name="stagetime",
            index=models.Index(
                fields=["funnel", "entered_at"],
                include=("stage", "seconds", "visit_started_at", "owner"),
                name="stagetime_cohort_idx",
            ),
        ),
    ]
