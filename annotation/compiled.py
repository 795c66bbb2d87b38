"""Querysets compiled to SQL once per connection, for the few statements on the labelling hot
path.

Django builds and compiles a queryset to SQL on every evaluation; for the row locks behind
next-task and submit that costs more CPU than PostgreSQL spends running them (0.4 to 2.4 ms
of Python per statement against well under a millisecond in the database: bench/README.md,
"Labelling under load"). A :class:`CompiledQuery` builds its queryset once per database
connection, with stand-in values for its parameters, keeps the SQL the ORM wrote, and from
then on binds fresh values and turns the row into model instances the way the ORM does
(``select_related`` objects and annotations included). The queryset stays the one definition
of the statement, so the SQL is the ORM's own for each database vendor.

Only for querysets whose shape does not depend on the values: the same filters, the same
joins, whatever the parameters are.
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
    """The first row of ``build(**params)``'s queryset, compiled once per connection.

    ``build`` takes the named parameters (each an ``int`` or a ``str``, declared with its
    type) and returns a queryset; it is called once per connection with stand-in values, and
    :meth:`first` runs the SQL with the real ones::

        member_lock = CompiledQuery(
            lambda campaign_id, user_id: Membership.objects.select_for_update()
            .select_related("campaign").filter(campaign_id=campaign_id, user_id=user_id),
            campaign_id=int,
            user_id=int,
        )
        membership = member_lock.first(campaign_id=3, user_id=7)
    """

    using = DEFAULT_DB_ALIAS

    def __init__(self, build: Callable[..., QuerySet], **params: type):
        self.build = build
        self.params = params
        self._per_connection: WeakKeyDictionary = WeakKeyDictionary()

    def first(self, **values: int) -> Model | None:
        connection = connections[self.using]
        compiled = self._per_connection.get(connection)
        if compiled is None:
            compiled = self._per_connection[connection] = self._compile()
        if compiled.locks and not connection.in_atomic_block:
            raise RuntimeError("a locking statement must run inside a transaction")
        params = tuple(
            values[name] if name is not None else constant
            for name, constant in zip(compiled.slots, compiled.constants, strict=True)
        )
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        if compiled.converters:
            (row,) = compiled.compiler.apply_converters([row], compiled.converters)
        obj = compiled.compiler.query.model.from_db(
            self.using, compiled.init_list, row[compiled.start : compiled.end]
        )
        for populator in compiled.populators:
            populator.populate(row, obj)
        for name, position in compiled.annotations.items():
            setattr(obj, name, row[position])
        return obj

    def _compile(self) -> _Compiled:
        stand_ins = {name: _stand_in(kind, i) for i, (name, kind) in enumerate(self.params.items())}
        queryset = self.build(**stand_ins)[:1]
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
