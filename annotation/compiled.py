"""Statements on the labelling hot path, written to SQL once instead of on every request.

Django builds and compiles a queryset to SQL on every evaluation; for the row locks behind
next-task and submit that costs more CPU than PostgreSQL spends running them (0.4 to 2.4 ms
of Python per statement against well under a millisecond in the database: bench/README.md,
"Labelling under load"). A :class:`CompiledQuery` builds its queryset once per database
connection, with stand-in values for its parameters, keeps the SQL the ORM wrote, and from
then on binds fresh values and turns the rows into model instances the way the ORM does
(``select_related`` objects, annotations and field converters included). The queryset stays
the one definition of the statement, so the SQL is the ORM's own for each database vendor.
Only for querysets whose shape does not depend on the values: the same filters, the same
joins, whatever the parameters are.

:func:`update_row` and :func:`insert_rows` do the same for the hot path's writes: the SQL of
a single-row ``UPDATE`` or a multi-row ``INSERT`` written once per vendor, the values
prepared by their fields as ``save()`` and ``bulk_create()`` prepare them.

Hydration uses the compiler's own description of its columns (``select``, ``klass_info``,
``annotation_col_map``) and Django's related populators, as ``ModelIterable`` does: internals
of the pinned Django, checked against the ORM's answers by tests/annotation/test_compiled.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators

STAND_IN_BASE = -1_900_000_000
"""Integer stand-ins count up from here: values no real id takes (in range for a 32-bit
column, so the ORM keeps the filter instead of dropping it as out of range)."""


def _stand_in(kind: type, index: int) -> int | str:
    if kind is int:
        return STAND_IN_BASE + index
    if kind is str:
        return f"\x00compiled-query-parameter-{index}"  # never sent: it only marks the slot
    raise TypeError(f"parameters are int or str, not {kind.__name__}")


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    slots: tuple[str | None, ...]  # per SQL parameter: the name to bind, or None (a constant)
    constants: tuple[Any, ...]
    compiler: Any
    init_list: list[str]
    start: int
    end: int
    populators: list
    annotations: dict[str, int]
    converters: dict
    locks: bool


class CompiledQuery:
    """The rows of ``build(**params)``'s queryset, compiled once per connection.

    ``build`` takes the named parameters (each an ``int`` or a ``str``, declared with its
    type) and returns a queryset; it is called once per connection with stand-in values, and
    :meth:`first` (the first row, ``LIMIT 1``) or :meth:`all` runs the SQL with the real ones::

        member_lock = CompiledQuery(
            lambda campaign_id, user_id: Membership.objects.select_for_update()
            .select_related("campaign").filter(campaign_id=campaign_id, user_id=user_id),
            campaign_id=int,
            user_id=int,
        )
        membership = member_lock.first(campaign_id=3, user_id=7)

    A parameter must reach the SQL unchanged (an exact comparison, ``in`` a subquery): one the
    ORM transforms (``contains``, a date part) is not found among the SQL's parameters, and
    compiling refuses it rather than run with the stand-in.
    """

    using = DEFAULT_DB_ALIAS

    def __init__(self, build: Callable[..., QuerySet], **params: type):
        self.build = build
        self.params = params
        self._per_connection: WeakKeyDictionary = WeakKeyDictionary()

    def first(self, **values: int | str) -> Model | None:
        """The first row as a model instance, or None."""
        rows = self._run(values, first=True)
        return rows[0] if rows else None

    def all(self, **values: int | str) -> list[Model]:
        """Every row, as model instances."""
        return self._run(values, first=False)

    def _run(self, values: dict, *, first: bool) -> list[Model]:
        connection = connections[self.using]
        per_shape = self._per_connection.setdefault(connection, {})
        compiled = per_shape.get(first)
        if compiled is None:
            compiled = per_shape[first] = self._compile(first=first)
        if compiled.locks and not connection.in_atomic_block:
            raise RuntimeError("a locking statement must run inside a transaction")
        params = tuple(
            values[name] if name is not None else constant
            for name, constant in zip(compiled.slots, compiled.constants, strict=True)
        )
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            rows = cursor.fetchall()
        if compiled.converters:
            rows = compiled.compiler.apply_converters(rows, compiled.converters)
        result = []
        for row in rows:
            obj = compiled.compiler.query.model.from_db(
                self.using, compiled.init_list, row[compiled.start : compiled.end]
            )
            for populator in compiled.populators:
                populator.populate(row, obj)
            for name, position in compiled.annotations.items():
                setattr(obj, name, row[position])
            result.append(obj)
        return result

    def _compile(self, *, first: bool) -> _Compiled:
        stand_ins = {name: _stand_in(kind, i) for i, (name, kind) in enumerate(self.params.items())}
        queryset = self.build(**stand_ins)
        if first:
            queryset = queryset[:1]
        compiler = queryset.query.get_compiler(using=self.using)
        sql, constants = compiler.as_sql()  # a lock compiles only inside a transaction
        by_value = {value: name for name, value in stand_ins.items()}
        slots = tuple(
            by_value.get(value) if type(value) in (int, str) else None for value in constants
        )
        missing = set(self.params) - set(slots)
        if missing:
            raise ValueError(f"parameters {sorted(missing)} do not appear in the SQL")
        select, klass_info = compiler.select, compiler.klass_info
        fields = klass_info["select_fields"]
        start, end = fields[0], fields[-1] + 1
        return _Compiled(
            sql=sql,
            slots=slots,
            constants=tuple(constants),
            compiler=compiler,
            init_list=[column[0].target.attname for column in select[start:end]],
            start=start,
            end=end,
            populators=get_related_populators(klass_info, select, self.using),
            annotations=dict(compiler.annotation_col_map or {}),
            converters=compiler.get_converters([column[0] for column in select]),
            locks=queryset.query.select_for_update,
        )


_STATEMENTS: dict[tuple, str] = {}


def _statement(connection, key: tuple, write: Callable[[Callable[[str], str]], str]) -> str:
    """The SQL for ``key`` on this connection's vendor, written once per process."""
    full_key = (connection.vendor, *key)
    sql = _STATEMENTS.get(full_key)
    if sql is None:
        sql = _STATEMENTS[full_key] = write(connection.ops.quote_name)
    return sql


def update_row(model: type[Model], pk: int, **values: Any) -> None:
    """``UPDATE`` one row by primary key, setting these fields: what ``save(update_fields=...)``
    does, without building a query each time (no signals, no ``auto_now``: for rows the caller
    holds locked and has just read). Values are prepared by their fields, as the ORM would."""
    connection = connections[DEFAULT_DB_ALIAS]
    fields = [model._meta.get_field(name) for name in values]
    sql = _statement(
        connection,
        ("update", model, *values),
        lambda qn: (
            f"UPDATE {qn(model._meta.db_table)} SET "
            + ", ".join(f"{qn(field.column)} = %s" for field in fields)
            + f" WHERE {qn(model._meta.pk.column)} = %s"
        ),
    )
    params = [
        field.get_db_prep_save(value, connection)
        for field, value in zip(fields, values.values(), strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, pk])


def insert_rows(model: type[Model], names: tuple[str, ...], rows: list[tuple]) -> None:
    """``INSERT`` rows (tuples of the named fields' values) in one statement, without building
    a query each time: ``bulk_create`` for a hot path that needs neither the new ids nor
    signals. Values are prepared by their fields, as the ORM would."""
    if not rows:
        return
    connection = connections[DEFAULT_DB_ALIAS]
    fields = [model._meta.get_field(name) for name in names]
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = _statement(
        connection,
        ("insert", model, names, len(rows)),
        lambda qn: (
            f"INSERT INTO {qn(model._meta.db_table)} "
            + "("
            + ", ".join(qn(field.column) for field in fields)
            + ") VALUES "
            + ", ".join([placeholders] * len(rows))
        ),
    )
    params = [
        field.get_db_prep_save(value, connection)
        for row in rows
        for field, value in zip(fields, row, strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
