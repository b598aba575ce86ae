"""On PostgreSQL, the database itself refuses to edit or delete history rows.

(SQLite gets the model-level guard only: its test flush deletes rows one by one.)
"""

from django.db import migrations

TABLES = ("deals_stagechange", "deals_statuschange")

FORWARD = """
CREATE OR REPLACE FUNCTION voronka_history_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'Deal history (%) is append-only: rows are never changed or deleted',
        TG_TABLE_NAME;
END;
$$ LANGUAGE plpgsql;
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # params=None: the function body's "%" is PL/pgSQL, not a query placeholder.
    schema_editor.execute(FORWARD, params=None)
    for table in TABLES:
        schema_editor.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION voronka_history_is_append_only()"
        )


def backward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
    schema_editor.execute("DROP FUNCTION IF EXISTS voronka_history_is_append_only()")


class Migration(migrations.Migration):
    dependencies = [("deals", "0001_initial")]

    operations = [migrations.RunPython(forward, backward)]
