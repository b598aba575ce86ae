"""Fast bulk writes for the importer and the benchmark: COPY on PostgreSQL.

Django's ``bulk_create``/``bulk_update`` build one huge statement per batch,
about ten thousand rows a second here; COPY and pipelined ``executemany`` are
an order of magnitude faster. Values go through each field's
``get_db_prep_value``, so they are stored exactly as the ORM would store them.
"""

from collections.abc import Iterable, Sequence

from django.db import connection, models


def _prep(model: type[models.Model], columns: Sequence[str]):
    fields = [model._meta.get_field(name) for name in columns]
    names = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    conn = connection._connections[connection._alias]  # the real wrapper, not the proxy
    if conn.vendor == "postgresql":
        # COPY adapts Python values itself; only JSON needs wrapping.
        from psycopg.types.json import Jsonb

        json_columns = [i for i, f in enumerate(fields) if isinstance(f, models.JSONField)]

        def prep(row: Sequence) -> Sequence:
            if not json_columns:
                return row
            row = list(row)
            for i in json_columns:
                row[i] = None if row[i] is None else Jsonb(row[i])
            return row

        return names, prep

    def prep(row: Sequence) -> list:
        return [
            field.get_db_prep_value(value, conn, prepared=False)
            for field, value in zip(fields, row, strict=True)
        ]

    return names, prep


def insert_rows(
    model: type[models.Model], columns: Sequence[str], rows: Iterable[Sequence]
) -> None:
    """Insert rows given as tuples in ``columns`` order."""
    names, prep = _prep(model, columns)
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The raw cursor's errors become Django's (IntegrityError, ...), as the ORM's do.
            copy_sql = f"COPY {table} ({names}) FROM STDIN"
            with connection.wrap_database_errors, cursor.cursor.copy(copy_sql) as copy:
                for row in rows:
                    copy.write_row(prep(row))
            return
        marks = ", ".join(["%s"] * len(columns))
        cursor.executemany(
            f"INSERT INTO {table} ({names}) VALUES ({marks})", [prep(r) for r in rows]
        )


def update_rows(
    model: type[models.Model], columns: Sequence[str], rows: Iterable[Sequence]
) -> None:
    """Update ``columns`` of rows given as (value, ..., pk) tuples."""
    fields = [model._meta.get_field(name) for name in columns]
    table = connection.ops.quote_name(model._meta.db_table)
    sets = ", ".join(f"{connection.ops.quote_name(f.column)} = %s" for f in fields)
    pk = connection.ops.quote_name(model._meta.pk.column)
    params = [
        [
            f.get_db_prep_value(v, connection, prepared=False)
            for f, v in zip(fields, row[:-1], strict=True)
        ]
        + [row[-1]]
        for row in rows
    ]
    if params:
        with connection.cursor() as cursor:
            cursor.executemany(f"UPDATE {table} SET {sets} WHERE {pk} = %s", params)


def reserve_ids(model: type[models.Model], count: int) -> list[int] | None:
    """Take ``count`` primary keys from the table's sequence (PostgreSQL), else None."""
    if connection.vendor != "postgresql" or count == 0:
        return None
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [table, model._meta.pk.column, count],
        )
        return [row[0] for row in cursor.fetchall()]


def insert_objects(objects: Sequence[models.Model]) -> None:
    """Insert unsaved instances of one model whose ids nobody reads back (history and
    summary rows): ``insert_rows`` of every concrete field but the id, one COPY on
    PostgreSQL, with none of ``bulk_create``'s per-value work."""
    if not objects:
        return
    model = type(objects[0])
    for obj in objects:
        obj._prepare_related_fields_for_save(operation_name="bulk_create")
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    insert_rows(
        model,
        [field.name for field in fields],
        ([field.pre_save(obj, add=True) for field in fields] for obj in objects),
    )


def insert_objects_with_ids(objects: Sequence[models.Model], *, copy_from: int = 10) -> None:
    """Insert unsaved instances of one model and set their ids, as ``bulk_create`` does.

    From ``copy_from`` objects on, on PostgreSQL, the ids are taken from the table's
    sequence first and the rows written with COPY: a few times less work per row.
    Fewer objects (one lead) go through ``bulk_create``: one statement instead of two.
    """
    if not objects:
        return
    model = type(objects[0])
    for obj in objects:
        # As bulk_create: a related object saved after it was assigned (a deal's new
        # client) gives its id now.
        obj._prepare_related_fields_for_save(operation_name="bulk_create")
    ids = reserve_ids(model, len(objects)) if len(objects) >= copy_from else None
    if ids is None:
        model.objects.bulk_create(objects)
        return
    for obj, pk in zip(objects, ids, strict=True):
        obj.pk = pk
    fields = list(model._meta.concrete_fields)
    insert_rows(
        model,
        [field.name for field in fields],
        ([field.pre_save(obj, add=True) for field in fields] for obj in objects),
    )
    for obj in objects:
        obj._state.adding = False
        obj._state.db = connection.alias
