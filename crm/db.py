"""Fast reads and writes for hot paths (lead intake, the importer): hand-written SQL.

Django's ``bulk_create``/``bulk_update`` build one huge statement per batch,
about ten thousand rows a second here; COPY and pipelined ``executemany`` are
an order of magnitude faster. Values go through each field's
``get_db_prep_value``, so they are stored exactly as the ORM would store them.

Building a queryset's SQL costs a few hundred microseconds of CPU each time;
``fetch_objects`` runs a hand-written SELECT instead and makes model instances
with the ORM's own value converters, so they equal what the queryset returns.
"""

import contextlib
import contextvars
import functools
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


# Rows of small inserts made inside ``writes_together``: (sql, params), in order.
_pending: contextvars.ContextVar[list[tuple[str, list]] | None] = contextvars.ContextVar(
    "pending_inserts", default=None
)


@contextlib.contextmanager
def writes_together():
    """Send the ``insert_rows`` and ``write_later`` made inside (the history, summaries,
    tasks, notes and receipts of a request's leads, its round-robin turn) to
    PostgreSQL together when the block ends: one round trip instead of one each,
    with one ``INSERT ... SELECT FROM unnest(...)`` per table (``insert_rows`` of
    ``COPY_FROM`` rows or more goes in at once, with COPY). Their rows only
    reference rows written before, and nothing inside reads them back. Nested
    blocks join the outer one. On SQLite every write runs at once.

    The writes wait in this process, not in the database: a savepoint rolled back
    inside the block (``atomic()`` whose error is caught) does not take back the
    writes queued within it. Keep such savepoints out of the block; nothing in the
    intake opens one.
    """
    if _pending.get() is not None or connection.vendor != "postgresql":
        yield
        return
    token = _pending.set([])
    try:
        yield
        _flush_pending()
    finally:
        _pending.reset(token)


def write_later(sql: str, params: Sequence = ()) -> None:
    """Run a write whose result nobody reads: inside ``writes_together``, with the
    block's other writes; elsewhere at once."""
    pending = _pending.get()
    if pending is not None:
        pending.append((sql, list(params)))
        return
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _statements_together() -> bool:
    """Whether one execute may carry several statements: on PostgreSQL with psycopg's
    client-side binding (Django's default), which sends them as one simple query."""
    return (
        connection.vendor == "postgresql"
        and connection.settings_dict.get("OPTIONS", {}).get("server_side_binding") is not True
    )


def _flush_pending() -> None:
    pending = _pending.get()
    if not pending:
        return
    statements = list(pending)
    pending.clear()
    with connection.cursor() as cursor:
        if not _statements_together():
            for sql, params in statements:  # the extended protocol takes one at a time
                cursor.execute(sql, params)
            return
        cursor.execute(
            ";\n".join(sql for sql, _params in statements),
            [param for _sql, params in statements for param in params],
        )


@contextlib.contextmanager
def sent_with_next(sql: str, params: Sequence = ()):
    """Run ``sql`` (a statement whose result nobody reads: taking locks) just before the
    first statement run inside the block, in the same round trip.

    They still run one after the other, and under READ COMMITTED each statement
    sees what committed before it started: a read sent with the locks it must wait
    for sees what their holders wrote. Use it inside a transaction (a lock taken in
    autocommit ends with its statement). On SQLite, with server-side binding, or
    before an ``executemany`` or a server-side cursor, ``sql`` runs on its own; if
    nothing runs inside the block, it runs when the block ends.
    """
    state = {"sent": False}

    def send_alone(cursor=None) -> None:
        state["sent"] = True
        if cursor is None:
            with connection.cursor() as own:
                own.execute(sql, params)
        else:
            cursor.execute(sql, params)

    if not _statements_together():
        send_alone()
        yield
        return

    def together(execute, query, query_params, many, context):
        if state["sent"]:
            return execute(query, query_params, many, context)
        named = getattr(context["cursor"].cursor, "name", None)  # a server-side cursor
        if many or named or not isinstance(query_params, list | tuple):
            send_alone(context["cursor"])
            return execute(query, query_params, many, context)
        state["sent"] = True  # both in one simple query; then on to the second's result
        result = execute(f"{sql};\n{query}", [*params, *query_params], many, context)
        context["cursor"].nextset()
        return result

    with connection.execute_wrapper(together):
        yield
    if not state["sent"]:
        send_alone()


# From this many rows, ``insert_rows`` writes with COPY at once instead of waiting.
COPY_FROM = 10


def insert_rows(
    model: type[models.Model], columns: Sequence[str], rows: Iterable[Sequence]
) -> None:
    """Insert rows given as tuples in ``columns`` order (foreign keys as ids); nothing
    for no rows. Inside ``writes_together``, when the block ends."""
    rows = list(rows)
    if not rows:
        return
    pending = _pending.get()
    if pending is None or len(rows) >= COPY_FROM:
        # Many rows go in at once with COPY, whose rows psycopg writes in C: quoting
        # the arrays of a deferred write costs more, in Python, than a round trip.
        # The foreign keys are checked at commit, so the order does not matter.
        _write_rows(model, columns, rows)
        return
    _names, prep = _prep(model, columns)
    # One array per column, whatever the number of rows: a short statement that
    # PostgreSQL parses at once (a long VALUES list costs more than COPY).
    columns_values = [list(values) for values in zip(*map(prep, rows), strict=True)]
    pending.append((_unnest_insert_sql(model, tuple(columns)), columns_values))


@functools.cache
def _unnest_insert_sql(model: type[models.Model], columns: tuple[str, ...]) -> str:
    fields = [model._meta.get_field(name) for name in columns]
    quote = connection.ops.quote_name
    arrays = ", ".join(f"%s::{field.db_type(connection)}[]" for field in fields)
    return (
        f"INSERT INTO {quote(model._meta.db_table)} "
        f"({', '.join(quote(field.column) for field in fields)}) SELECT * FROM unnest({arrays})"
    )


def _write_rows(
    model: type[models.Model], columns: Sequence[str], rows: Iterable[Sequence]
) -> None:
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


def insert_rows_with_ids(
    model: type[models.Model], columns: Sequence[str], rows: Sequence[Sequence]
) -> list[int]:
    """Insert rows given as tuples in ``columns`` order (foreign keys as ids) at once;
    return their new ids, in order. PostgreSQL: the ids come from the table's sequence
    and the rows go in with COPY; elsewhere ``bulk_create`` numbers them."""
    ids = reserve_ids(model, len(rows))
    if ids is not None:
        _write_rows(
            model, ("id", *columns), [(pk, *row) for pk, row in zip(ids, rows, strict=True)]
        )
        return ids
    attnames = [model._meta.get_field(name).attname for name in columns]
    created = model.objects.bulk_create(
        (model(**dict(zip(attnames, row, strict=True))) for row in rows), batch_size=2000
    )
    return [obj.pk for obj in created]


def insert_objects(objects: Sequence[models.Model]) -> None:
    """Insert unsaved instances of one model whose ids nobody reads back (history and
    summary rows): ``insert_rows`` of every concrete field but the id, one COPY on
    PostgreSQL, with none of ``bulk_create``'s per-value work. The objects they
    reference are saved before they are built (their ids are read as they are)."""
    if not objects:
        return
    model = type(objects[0])
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
    Fewer objects (one lead) go in one ``INSERT ... RETURNING``: one statement
    instead of two, without the ORM's statement building.
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
        if connection.features.can_return_rows_from_bulk_insert:
            _insert_returning_ids(objects)
        else:
            model.objects.bulk_create(objects)
        return
    for obj, pk in zip(objects, ids, strict=True):
        obj.pk = pk
    fields = list(model._meta.concrete_fields)
    _write_rows(  # at once: later rows (and writes_together's) reference these
        model,
        [field.name for field in fields],
        ([field.pre_save(obj, add=True) for field in fields] for obj in objects),
    )
    for obj in objects:
        obj._state.adding = False
        obj._state.db = connection.alias


def _insert_returning_ids(objects: Sequence[models.Model]) -> None:
    model = type(objects[0])
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    quote = connection.ops.quote_name
    names = ", ".join(quote(field.column) for field in fields)
    row_marks = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = [
        field.get_db_prep_save(field.pre_save(obj, add=True), connection)
        for obj in objects
        for field in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(model._meta.db_table)} ({names}) "
            f"VALUES {', '.join([row_marks] * len(objects))} "
            f"RETURNING {quote(model._meta.pk.column)}",
            params,
        )
        ids = [row[0] for row in cursor.fetchall()]  # in VALUES order, as bulk_create relies on
    for obj, pk in zip(objects, ids, strict=True):
        obj.pk = pk
        obj._state.adding = False
        obj._state.db = connection.alias


@functools.cache
def _select_plan(model: type[models.Model], names: tuple[str, ...], vendor: str):
    """The fields in model order, their attnames and each column's converters."""
    fields = [field for field in model._meta.concrete_fields if field.name in names]
    unknown = set(names) - {field.name for field in fields}
    if unknown:
        raise ValueError(f"Not concrete fields of {model.__name__}: {sorted(unknown)}")
    converters = []
    for index, field in enumerate(fields):
        col = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if found:
            converters.append((index, col, found))
    return fields, [field.attname for field in fields], converters


def select_list(model: type[models.Model], names: Iterable[str], table: str) -> str:
    """The SELECT list of ``fetch_objects`` for these fields, columns of ``table`` (an alias)."""
    fields, _attnames, _converters = _select_plan(model, tuple(names), connection.vendor)
    quote = connection.ops.quote_name
    return ", ".join(f"{table}.{quote(field.column)}" for field in fields)


def fetch_objects(
    model: type[models.Model], names: Sequence[str], sql: str, params: Sequence = ()
) -> list[models.Model]:
    """Instances of ``model`` from a hand-written SELECT, other fields deferred.

    ``sql`` selects ``select_list(model, names, ...)`` (the fields in the model's
    order); values go through the same converters as the ORM's, so that SQLite's
    dates and decimals and JSON on both databases come out as a queryset's would.
    """
    return [row[0] for row in fetch_joined([(model, names)], sql, params)]


def fetch_joined(
    parts: Sequence[tuple[type[models.Model], Sequence[str]]], sql: str, params: Sequence = ()
) -> list[tuple[models.Model | None, ...]]:
    """``fetch_objects`` for a join: each row is the ``select_list`` of each (model,
    names) in turn and becomes a tuple of instances; a part whose id is NULL (an
    outer join without a match) is None."""
    plans = [_select_plan(model, tuple(names), connection.vendor) for model, names in parts]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    alias = connection.alias
    result = []
    for row in rows:
        start, objects = 0, []
        for (model, _names), (fields, attnames, converters) in zip(parts, plans, strict=True):
            values = list(row[start : start + len(fields)])
            start += len(fields)
            if values[0] is None and fields[0].primary_key:
                objects.append(None)
                continue
            for index, col, functions in converters:
                for convert in functions:
                    values[index] = convert(values[index], col, connection)
            objects.append(model.from_db(alias, attnames, values))
        result.append(tuple(objects))
    return result


def placeholders(count: int) -> str:
    """``%s, %s, ...``: the parameters of an ``IN (...)`` list."""
    return ", ".join(["%s"] * count)
