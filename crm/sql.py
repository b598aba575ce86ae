"""SQL expressions that both the models (index definitions) and the queries use.

An index on an expression serves a query only when the query computes the same
expression, so the funnel engine and the deals' indexes share this one.
"""

from django.db.models import FloatField, Func


class Seconds(Func):
    """``end - start`` in seconds, as a float, on PostgreSQL and SQLite.

    PostgreSQL's ``date_part`` gives the float directly; ``EXTRACT`` would compute
    an exact numeric that every aggregate then converts, several times slower.
    """

    output_field = FloatField()

    def __init__(self, end, start):
        super().__init__(end, start)

    def as_postgresql(self, compiler, conn, **extra):
        return self.as_sql(
            compiler,
            conn,
            template="date_part('epoch', %(expressions)s)",
            arg_joiner=" - ",
            **extra,
        )

    def as_sqlite(self, compiler, conn, **extra):
        return self.as_sql(
            compiler,
            conn,
            template="((julianday(%(expressions)s)) * 86400.0)",
            arg_joiner=") - julianday(",
            **extra,
        )
