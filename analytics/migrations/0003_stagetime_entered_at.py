import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("analytics", "0002_snapshots"),
        ("deals", "0004_deal_is_repeat_client"),
    ]

    operations = [
        migrations.AddField(
            model_name="stagetime",
            name="entered_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
            preserve_default=False,
        ),
        migrations.RunSQL(
            "UPDATE analytics_stagetime SET entered_at = "
            "(SELECT created_at FROM deals_deal WHERE deals_deal.id = analytics_stagetime.deal_id)",
            migrations.RunSQL.noop,
        ),
        migrations.AddIndex(
            model_name="stagetime",
            index=models.Index(fields=["funnel", "entered_at"], name="stagetime_cohort_idx"),
        ),
    ]
