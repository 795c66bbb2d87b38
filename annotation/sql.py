"""The labelling hot path's statements, written as SQL: next task, submit, token authentication.

Django builds and compiles a queryset to SQL on every evaluation; for the row locks behind
next-task and submit that costs more CPU than PostgreSQL spends running them (0.4 to 2.4 ms of
Python per statement against well under a millisecond in the database: bench/README.md,
"Labelling under load"). So these few statements are written here once, as SQL reviewed like
any other code, run through ``connection.cursor()``, and their rows turned into model instances
by ``Model.from_db``, the ORM's hook for rows it did not read itself. Everything else stays on
the ORM.

Measured (bench/README.md, "Plain SQL on the hot path, side by side"; 2 shared cores, runs
alternated): web CPU per next + submit cycle in process (``bench/profile_hot_path.py --cycles
300``) 17.9 ms with the ORM building every statement (commit c995399), 7.8 ms with its
predecessor annotation/compiled.py (8347d28) and 7.8 ms with this module, medians of 4 runs each
on a loaded machine: a 2.3x speed-up over the ORM, none over compiled.py (on a quieter machine,
10 runs each: 3.78 ms compiled.py, 3.76 ms this module). Under load (``bench/load_labellers.py``,
3 sync gunicorn workers, PostgreSQL, 12 alternated pairs): K = 32 median throughput ratio 0.96
of compiled.py's (spread 0.35-1.42x with other work on the cores), K = 1 median p50 +0.3 ms.

Each statement is a :class:`Select`: its SQL with ``{alias}`` where an aliased model's columns
go and ``{Model}`` where its table does (names come from the models' ``_meta``, so a renamed
column cannot drift from the SQL), the models it reads and where each instance hangs on the
first one (``"task.prompt"``: ``row.task.prompt``), and the row lock. The SQL is the same on
PostgreSQL and SQLite but for the lock: ``FOR UPDATE OF ... [SKIP LOCKED]`` is PostgreSQL's;
SQLite has no row locks and serialises writers with ``BEGIN IMMEDIATE`` instead. Values are
converted as the ORM converts them (JSON decoded by its field, SQLite's naive datetimes made
aware); a model gaining a field type not handled here fails loudly on the first use.
tests/annotation/test_sql.py checks every statement against the queryset it stands for, on
both databases.

:func:`update_row` and :func:`insert_rows` are the writes' counterparts: a single-row
``UPDATE`` by primary key and a multi-row ``INSERT``, values prepared by their fields
(``get_db_prep_save``) as ``save()`` would. They skip signals and ``auto_now``, so they are
for the hot path's Task, Assignment and RankingItem rows, which have neither:
:func:`check_plain_writes` refuses a model with either when a write's SQL is first built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from django.db.models import signals
from django.utils import timezone

from accounts.models import ApiToken
from annotation.models import (
    Assignment,
    Campaign,
    Completion,
    Guideline,
    Membership,
    Prompt,
    Task,
    TaskCompletion,
)

Converter = Callable[[Any], Any]

PLAIN_FIELDS = (
    models.AutoField,
    models.BigAutoField,
    models.IntegerField,  # and its Positive/Small/Big kinds
    models.FloatField,
    models.CharField,
    models.TextField,
    models.ForeignKey,
)
"""Field types whose database values need no conversion on either database (with the
datetime, boolean and JSON fields handled by :func:`_converter`, every field the hot path's
models have)."""


def _sqlite_datetime(value: Any) -> Any:
    # As Django's SQLite backend does: the value comes back naive, in the database's time zone.
    if value is not None and settings.USE_TZ and timezone.is_naive(value):
        return timezone.make_aware(value, connection.timezone)
    return value


def _converter(field: models.Field) -> Converter | None:
    """How the current database's value for ``field`` becomes the attribute's (None: as is)."""
    if isinstance(field, models.JSONField):  # text on both backends; the field decodes it
        return lambda value: field.from_db_value(value, None, connection)
    if isinstance(field, models.DateTimeField):
        return _sqlite_datetime if connection.vendor == "sqlite" else None
    if isinstance(field, models.BooleanField):  # SQLite stores 0/1
        return None if connection.vendor != "sqlite" else (lambda v: v if v is None else bool(v))
    if isinstance(field, PLAIN_FIELDS):
        return None
    raise TypeError(f"annotation.sql: no conversion for {field.__class__.__name__} {field}")


class _Part:
    """One aliased model of a Select: its columns' slice of the row and its converters."""

    def __init__(self, alias: str, model: type[models.Model] | str, path: str | None):
        if isinstance(model, str):  # "app_label.Model", e.g. settings.AUTH_USER_MODEL
            model = apps.get_model(model)
        self.alias, self.model, self.path = alias, model, path
        self.steps = tuple(path.split(".")) if path else ()
        self.fields = list(model._meta.concrete_fields)
        self.pk_index = self.fields.index(model._meta.pk)
        self.attnames = [f.attname for f in self.fields]
        self.columns = ", ".join(f'{alias}."{f.column}"' for f in self.fields)
        self.converters: list[tuple[int, Converter]] | None = None
        self.vendor: str | None = None

    def build(self, values: list[Any], db: Any) -> models.Model | None:
        if self.vendor != db.vendor:  # once per process and database
            self.converters = [
                (i, c) for i, f in enumerate(self.fields) if (c := _converter(f)) is not None
            ]
            self.vendor = db.vendor
        if values[self.pk_index] is None:  # nothing on the outer-joined side
            return None
        for i, convert in self.converters:
            values[i] = convert(values[i])
        return self.model.from_db(db.alias, self.attnames, values)


class Select:
    """A SELECT written in SQL whose rows become instances of its first model, with the other
    models' instances attached where their path says and ``extra`` columns as attributes.

    ``parts`` map each alias in the SQL to its model, or to ``(model, path)`` for the models
    joined to the first one. ``lock`` is the row-lock clause (PostgreSQL only), appended after
    the SQL; a Select with a lock refuses to run outside a transaction. ``fixed`` are parameters
    every call binds (status values).
    """

    def __init__(
        self,
        sql: str,
        *,
        lock: str = "",
        extra: tuple[str, ...] = (),
        fixed: dict[str, Any] | None = None,
        **parts: type[models.Model] | str | tuple[type[models.Model] | str, str],
    ):
        self.template, self.lock, self.extra = sql, lock, extra
        self.fixed = fixed or {}
        self.raw_parts = parts
        self._parts: list[_Part] | None = None
        self._sql: dict[str, str] = {}

    @property
    def parts(self) -> list[_Part]:
        if self._parts is None:  # after the app registry is ready (the user model)
            self._parts = [
                _Part(alias, *(spec if isinstance(spec, tuple) else (spec, None)))
                for alias, spec in self.raw_parts.items()
            ]
        return self._parts

    def sql(self, db: Any = None) -> str:
        """The statement for the database of ``db`` (default: the current connection)."""
        db = db or connections[DEFAULT_DB_ALIAS]
        vendor = db.vendor
        if vendor not in self._sql:
            names = {part.alias: part.columns for part in self.parts}
            tables = {
                name: db.ops.quote_name(model._meta.db_table) for name, model in _tables().items()
            }
            text = self.template.format(**names, **tables)
            if self.lock and db.features.has_select_for_update:
                text += " " + self.lock
            self._sql[vendor] = re.sub(r"\s+", " ", text).strip()
        return self._sql[vendor]

    def all(self, **params: Any) -> list[models.Model]:
        """Every row, as instances of the first model."""
        db = connections[DEFAULT_DB_ALIAS]  # once: each lookup of it is a thread-local read
        if self.lock and not db.in_atomic_block:
            raise RuntimeError("a locking statement must run inside a transaction")
        with db.cursor() as cursor:
            cursor.execute(self.sql(db), {**self.fixed, **params})
            rows = cursor.fetchall()
        return [self._instance(list(row), db) for row in rows]

    def first(self, **params: Any) -> models.Model | None:
        """The first row (the SQL says ``LIMIT 1``), or None."""
        rows = self.all(**params)
        return rows[0] if rows else None

    def _instance(self, row: list[Any], db: Any) -> models.Model:
        start = 0
        root = None
        for part in self.parts:
            end = start + len(part.fields)
            obj = part.build(row[start:end], db)
            if root is None:
                root = obj
            else:
                owner = root
                for step in part.steps[:-1]:
                    owner = getattr(owner, step)
                setattr(owner, part.steps[-1], obj)
            start = end
        for name, value in zip(self.extra, row[start:], strict=True):
            setattr(root, name, value)
        return root


def _tables() -> dict[str, type[models.Model]]:
    """The ``{Name}`` a statement may use for a model's table."""
    tables = (Assignment, Campaign, Completion, Guideline, Membership, Prompt, Task, TaskCompletion)
    return {
        **{model.__name__: model for model in tables},
        "ApiToken": ApiToken,
        "User": apps.get_model(settings.AUTH_USER_MODEL),
    }


# --- next task -----------------------------------------------------------------------------------

MEMBERSHIP_LOCK = Select(
    """
    SELECT {m}, {c}
    FROM {Membership} m JOIN {Campaign} c ON m."campaign_id" = c."id"
    WHERE m."campaign_id" = %(campaign_id)s AND m."user_id" = %(user_id)s
    LIMIT 1
    """,
    lock="FOR UPDATE OF m",
    m=Membership,
    c=(Campaign, "campaign"),
)
"""The labeller's membership row, locked, with its campaign: serialises their own requests."""

HELD_LEASE_LOCK = Select(
    """
    SELECT {a}, {t}, {p}
    FROM {Assignment} a
      JOIN {Task} t ON a."task_id" = t."id"
      JOIN {Prompt} p ON t."prompt_id" = p."id"
    WHERE a."campaign_id" = %(campaign_id)s AND a."labeller_id" = %(labeller_id)s
      AND a."status" = %(assigned)s
    ORDER BY a."assigned_at" DESC, a."id" DESC
    LIMIT 1
    """,
    lock="FOR UPDATE OF a",
    fixed={"assigned": Assignment.Status.ASSIGNED.value},
    a=Assignment,
    t=(Task, "task"),
    p=(Prompt, "task.prompt"),
)
"""The labeller's open lease in the campaign (at most one), locked, with its task and prompt."""

_OPEN_TASK = """
    SELECT {t}, {p}, (
        SELECT mine."id" FROM {Assignment} mine
        WHERE mine."labeller_id" = %(labeller_id)s AND mine."task_id" = t."id"
        ORDER BY mine."assigned_at" DESC, mine."id" DESC
        LIMIT 1
      ) AS expired_assignment_id
    FROM {Task} t JOIN {Prompt} p ON t."prompt_id" = p."id"
    WHERE t."campaign_id" = %(campaign_id)s
      AND NOT EXISTS (
        SELECT 1 FROM {Assignment} done
        WHERE done."labeller_id" = %(labeller_id)s AND done."task_id" = t."id"
          AND done."status" IN (%(submitted)s, %(skipped)s)
      )
      AND {candidates}
    LIMIT 1
"""
"""A task of the campaign the labeller has neither ranked nor skipped, with the id of their
earlier assignment to it (an expired lease, reused) or NULL."""


def _first_free(candidates: str) -> Select:
    return Select(
        _OPEN_TASK.replace("{candidates}", candidates),
        lock="FOR UPDATE OF t SKIP LOCKED",
        extra=("expired_assignment_id",),
        fixed={
            "submitted": Assignment.Status.SUBMITTED.value,
            "skipped": Assignment.Status.SKIPPED.value,
        },
        t=Task,
        p=(Prompt, "prompt"),
    )


FIRST_FREE_REAL = _first_free(
    'NOT t."is_gold" AND t."active_count" < t."target_overlap" '
    'ORDER BY t."active_count" DESC, t."priority" DESC, t."id" ASC'
)
"""The first real task with room nobody else is assigning (SKIP LOCKED), breadth first: most
started, then priority, then id; locked."""

FIRST_FREE_GOLD = _first_free('t."is_gold" ORDER BY t."id" ASC')
"""The first gold task (a gold task always has room) nobody else is assigning; locked."""


def task_completions(task_id: int) -> list[tuple[int, str, str]]:
    """The task's completions as ``(id, text, source)``, in the task's order."""
    db = connections[DEFAULT_DB_ALIAS]
    sql = _TASK_COMPLETIONS.sql(db)
    with db.cursor() as cursor:
        cursor.execute(sql, {"task_id": task_id})
        return [(pk, text, source) for pk, text, source in cursor.fetchall()]


_TASK_COMPLETIONS = Select(
    """
    SELECT c."id", c."text", c."source"
    FROM {Completion} c JOIN {TaskCompletion} tc ON c."id" = tc."completion_id"
    WHERE tc."task_id" = %(task_id)s
    ORDER BY tc."position" ASC
    """
)


# --- submit --------------------------------------------------------------------------------------

SUBMIT_LOCK = Select(
    """
    SELECT {a}, {t}, {c}, {g}
    FROM {Assignment} a
      JOIN {Task} t ON a."task_id" = t."id"
      JOIN {Campaign} c ON a."campaign_id" = c."id"
      LEFT JOIN {Guideline} g ON a."guideline_id" = g."id"
    WHERE a."id" = %(assignment_id)s AND a."labeller_id" = %(labeller_id)s
    LIMIT 1
    """,
    lock="FOR UPDATE OF a, t",
    a=Assignment,
    t=(Task, "task"),
    c=(Campaign, "campaign"),
    g=(Guideline, "guideline"),
)
"""The labeller's assignment and its task, both locked, with the campaign and the guideline
version it was handed out under."""


# --- token authentication ------------------------------------------------------------------------

TOKEN = Select(
    """
    SELECT {k}, {u}
    FROM {ApiToken} k JOIN {User} u ON k."user_id" = u."id"
    WHERE k."key_hash" = %(key_hash)s
    LIMIT 1
    """,
    k=ApiToken,
    u=(settings.AUTH_USER_MODEL, "user"),
)
"""An API token, found by the SHA-256 of its key (unique index), with its user; whether it is
revoked or expired is read from the row (annotation/api/authentication.py), so a dead token
is told apart from an unknown one in the same single lookup."""


# --- writes --------------------------------------------------------------------------------------

_WRITES: dict[tuple, str] = {}


def check_plain_writes(model: type[models.Model], *, names: tuple[str, ...] | None = None) -> None:
    """Refuse a model whose ``save()`` or ``bulk_create`` does more than the plain statements
    below would: a field ``auto_now`` sets on every save (or, when inserting, ``auto_now_add``
    on a field the rows leave out), or a ``pre_save``/``post_save`` receiver. Called when a
    write's SQL is built (once per statement and process), so a field or receiver added later
    to Task, Assignment or RankingItem fails the first write instead of being silently
    skipped; tests/annotation/test_sql.py checks the same after a whole next + submit."""
    skipped = [
        f"{field.name} (auto_now)"
        for field in model._meta.concrete_fields
        if getattr(field, "auto_now", False)
    ]
    if names is not None:
        skipped += [
            f"{field.name} (auto_now_add)"
            for field in model._meta.concrete_fields
            if getattr(field, "auto_now_add", False) and field.name not in names
        ]
    skipped += [
        f"{signal} receivers"
        for signal in ("pre_save", "post_save")
        if getattr(signals, signal).has_listeners(model)
    ]
    if skipped:
        raise TypeError(
            f"annotation.sql writes {model.__name__} without save(), which would skip "
            f"{', '.join(skipped)}: write it with the ORM"
        )


def update_row(model: type[models.Model], pk: int, **values: Any) -> None:
    """``UPDATE`` one row by primary key, setting these fields (what
    ``save(update_fields=...)`` does, for a row the caller holds locked and has just read)."""
    db = connections[DEFAULT_DB_ALIAS]
    fields = [model._meta.get_field(name) for name in values]
    key = ("update", db.vendor, model, *values)
    if key not in _WRITES:
        check_plain_writes(model)
        qn = db.ops.quote_name
        assignments = ", ".join(f"{qn(field.column)} = %s" for field in fields)
        _WRITES[key] = (
            f"UPDATE {qn(model._meta.db_table)} SET {assignments} "
            f"WHERE {qn(model._meta.pk.column)} = %s"
        )
    params = [
        field.get_db_prep_save(value, db)
        for field, value in zip(fields, values.values(), strict=True)
    ]
    with db.cursor() as cursor:
        cursor.execute(_WRITES[key], [*params, pk])


def insert_rows(model: type[models.Model], names: tuple[str, ...], rows: list[tuple]) -> None:
    """``INSERT`` rows (tuples of the named fields' values) in one statement: ``bulk_create``
    for a hot path that needs neither the new ids nor signals."""
    if not rows:
        return
    db = connections[DEFAULT_DB_ALIAS]
    fields = [model._meta.get_field(name) for name in names]
    key = ("insert", db.vendor, model, names, len(rows))
    if key not in _WRITES:
        check_plain_writes(model, names=names)
        qn = db.ops.quote_name
        columns = ", ".join(qn(field.column) for field in fields)
        placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
        _WRITES[key] = f"INSERT INTO {qn(model._meta.db_table)} ({columns}) VALUES " + ", ".join(
            [placeholders] * len(rows)
        )
    params = [
        field.get_db_prep_save(value, db)
        for row in rows
        for field, value in zip(fields, row, strict=True)
    ]
    with db.cursor() as cursor:
        cursor.execute(_WRITES[key], params)
