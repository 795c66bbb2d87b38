"""Prompts and completions in: the all-or-nothing import of a file (parsed and checked by
:mod:`annotation.importing`) and :func:`tasks_create`, which the import and the RLHF loop's
generated campaigns share.

An upload larger than ``IMPORT_BACKGROUND_BYTES`` is not imported in the web request (a 20 MB
file outlasted gunicorn's 60 s timeout): :func:`campaign_import_upload` keeps it in an
:class:`~annotation.models.ImportJob` and a worker on the ``default`` queue runs
:func:`import_job_run`, still all or nothing, its stage and result on the row.
"""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser as User
from django.db import connection, transaction
from django.utils import timezone

from annotation import importing
from annotation.errors import Conflict, InvalidInput
from annotation.models import (
    Campaign,
    Completion,
    ImportJob,
    Prompt,
    Task,
    TaskCompletion,
)
from annotation.pairs import Label
from annotation.services.overlap import initial_overlap
from annotation.services.task_order import apply_task_order
from config.celery import app

logger = logging.getLogger(__name__)

RUN_IMPORT_TASK = "annotation.tasks.run_import"
"""The Celery task that runs an import job, sent by name (``annotation.tasks`` imports this)."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    prompts: int
    tasks: int
    completions: int
    gold_tasks: int = 0


def campaign_import(
    *, campaign: Campaign, data: bytes, filename: str, fmt: str | None = None
) -> ImportResult:
    """Import prompts (with or without completions) from JSONL or CSV, all or nothing.

    Raises ``importing.ImportFailed`` with line-numbered errors; nothing is written then.
    """
    parsed = importing.parse_import(
        data,
        fmt=fmt or importing.detect_format(filename),
        completions_per_task=campaign.completions_per_task,
        max_text_chars=settings.IMPORT_MAX_TEXT_CHARS,
        max_bytes=settings.IMPORT_MAX_BYTES,
        default_source=f"import:{filename}"[:200],
        allow_ties=campaign.allow_ties,
        allow_fail=campaign.allow_fail,
    )
    return _store_import(campaign=campaign, records=parsed)


def campaign_import_file(
    *, campaign: Campaign, file: Any, filename: str, fmt: str | None = None
) -> ImportResult:
    """Import an uploaded file: its size is checked before it is read into memory."""
    size = getattr(file, "size", None)
    if size is not None:
        importing.check_size(size, max_bytes=settings.IMPORT_MAX_BYTES)
    return campaign_import(campaign=campaign, data=file.read(), filename=filename, fmt=fmt)


def campaign_import_upload(
    *, campaign: Campaign, file: Any, filename: str, fmt: str | None, created_by: User | None
) -> ImportResult | ImportJob:
    """Import an upload now when it is small; queue an :class:`ImportJob` for a worker when it
    is larger than ``IMPORT_BACKGROUND_BYTES`` (returned as it is: queued)."""
    size = getattr(file, "size", None)
    if size is None or size <= settings.IMPORT_BACKGROUND_BYTES:
        return campaign_import_file(campaign=campaign, file=file, filename=filename, fmt=fmt)
    importing.check_size(size, max_bytes=settings.IMPORT_MAX_BYTES)
    if fmt is None:
        importing.detect_format(filename)  # refused at once, not after the queue
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("cannot import into a closed campaign", field="campaign")
    with transaction.atomic():
        job = ImportJob.objects.create(
            campaign=campaign,
            created_by=created_by,
            filename=filename[:255],
            format=fmt or "",
            size=size,
            data=file.read(),
        )
        transaction.on_commit(lambda: _enqueue_import(job.pk))
    return job


def _enqueue_import(job_id: int) -> None:
    if app.conf.task_always_eager:
        import_job_run(job_id=job_id)
        return
    app.send_task(RUN_IMPORT_TASK, args=[job_id], queue="default")


def import_job_run(*, job_id: int) -> ImportJob | None:
    """Run a queued import job (the Celery task calls this): parse, then store all or nothing,
    recording the stage, then the result or the line-numbered errors. A job that is not queued
    (run already, or running elsewhere) is left alone and None returned."""
    with transaction.atomic():
        job = ImportJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status != ImportJob.Status.QUEUED:
            return None
        job.status, job.stage, job.started_at = (
            job.Status.RUNNING,
            job.Stage.PARSING,
            timezone.now(),
        )
        job.save(update_fields=["status", "stage", "started_at"])
    campaign = job.campaign
    try:
        records = importing.parse_import(
            bytes(job.data),
            fmt=job.format or importing.detect_format(job.filename),
            completions_per_task=campaign.completions_per_task,
            max_text_chars=settings.IMPORT_MAX_TEXT_CHARS,
            max_bytes=settings.IMPORT_MAX_BYTES,
            default_source=f"import:{job.filename}"[:200],
            allow_ties=campaign.allow_ties,
            allow_fail=campaign.allow_fail,
        )
        ImportJob.objects.filter(pk=job.pk).update(stage=job.Stage.STORING, records=len(records))
        result = _store_import(campaign=campaign, records=records)
    except importing.ImportFailed as exc:
        return _import_finished(job, errors=[asdict(e) for e in exc.errors])
    except (InvalidInput, Conflict) as exc:
        return _import_finished(
            job, errors=[{"line": 0, "field": exc.field, "message": exc.message}]
        )
    except Exception:
        logger.exception("import job %s failed", job.pk)
        _import_finished(job, errors=[], error=traceback.format_exc()[-20_000:])
        raise
    return _import_finished(job, result=asdict(result))


def _import_finished(
    job: ImportJob, *, result: dict | None = None, errors: list | None = None, error: str = ""
) -> ImportJob:
    job.status = job.Status.SUCCEEDED if result is not None else job.Status.FAILED
    job.stage = job.Stage.DONE
    job.result = result or {}
    job.errors = errors or []
    job.error = error
    job.data = b""
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "stage", "result", "errors", "error", "data", "finished_at"])
    return job


def interleave_gold(records: Sequence[importing.ParsedPrompt], *, seed: int | None = None) -> list:
    """``records`` with the gold ones moved to random places among the others, which keep their
    order (the sequential task order is the import's). Ids follow the order rows are created in,
    and labellers see completion ids: gold lines kept together (at the end of a file, say)
    would otherwise give gold tasks the highest ids, telling them apart."""
    real = [r for r in records if r.gold is None]
    gold = [r for r in records if r.gold is not None]
    if not gold or not real:
        return list(records)
    rng = random.SystemRandom() if seed is None else random.Random(seed)
    slots = sorted(rng.randrange(len(real) + 1) for _ in gold)
    merged: list = []
    taken = 0
    for position, record in zip(slots, gold, strict=True):
        merged.extend(real[taken:position])
        taken = max(taken, position)
        merged.append(record)
    return merged + real[taken:]


@transaction.atomic
def _store_import(*, campaign: Campaign, records: Sequence[importing.ParsedPrompt]) -> ImportResult:
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("cannot import into a closed campaign", field="campaign")
    records = interleave_gold(records)
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(
                campaign=campaign,
                external_id=r.external_id,
                text=r.text,
                messages=r.messages,
                metadata=r.metadata,
            )
            for r in records
        ]
    )
    with_completions = [(p, r) for p, r in zip(prompts, records, strict=True) if r.completions]
    completions = Completion.objects.bulk_create(
        [
            Completion(prompt=p, text=c.text, source=c.source, metadata=c.metadata)
            for p, r in with_completions
            for c in r.completions
        ]
    )
    n = campaign.completions_per_task
    groups = [(p, completions[i * n : (i + 1) * n]) for i, (p, _) in enumerate(with_completions)]
    gold = [
        None
        if r.gold is None
        else {str(c.pk): label for c, label in zip(group, r.gold, strict=True)}
        for (_, group), (_, r) in zip(groups, with_completions, strict=True)
    ]
    tasks = tasks_create(campaign=campaign, groups=groups, gold=gold)
    return ImportResult(
        prompts=len(prompts),
        tasks=len(tasks),
        completions=len(completions),
        gold_tasks=sum(g is not None for g in gold),
    )


def tasks_create(
    *,
    campaign: Campaign,
    groups: Sequence[tuple[Prompt, Sequence[Completion]]],
    gold: Sequence[dict[str, Label] | None] | None = None,
) -> list[Task]:
    """Create one task per (prompt, completions) group; each group must hold exactly N.

    ``gold[i]``, when given and not None, makes task i a gold task with that reference ranking
    (``{"<completion id>": label}``, already validated). New tasks start at k_min labellers with
    adaptive overlap, and take their place in the campaign's task order.
    """
    n = campaign.completions_per_task
    for prompt, group in groups:
        if len(group) != n:
            raise InvalidInput(
                f"prompt {prompt.pk} has {len(group)} completions; the campaign needs {n}",
                field="completions",
            )
    references = list(gold) if gold is not None else [None] * len(groups)
    if len(references) != len(groups):
        raise InvalidInput("one gold entry (or None) per group", field="gold")
    start = initial_overlap(campaign)
    tasks = Task.objects.bulk_create(
        [
            Task(
                campaign=campaign,
                prompt=p,
                target_overlap=start if reference is None else campaign.overlap,
                is_gold=reference is not None,
                gold_ranking=reference,
            )
            for (p, _), reference in zip(groups, references, strict=True)
        ]
    )
    if campaign.task_order != Campaign.TaskOrder.SEQUENTIAL:
        apply_task_order(campaign, [t for t in tasks if not t.is_gold])
    TaskCompletion.objects.bulk_create(
        [
            TaskCompletion(task=task, completion=c, position=i)
            for task, (_, group) in zip(tasks, groups, strict=True)
            for i, c in enumerate(group)
        ]
    )
    if len(tasks) >= PLANNER_REFRESH_TASKS:
        transaction.on_commit(task_statistics_refresh)
    return tasks


PLANNER_REFRESH_TASKS = 50
"""Imports of at least this many tasks refresh the planner's statistics on commit."""


def task_statistics_refresh() -> None:
    """Refresh PostgreSQL's planner statistics for tasks (``ANALYZE``).

    A campaign imported a moment ago is unknown to the statistics until autovacuum gets round
    to it; meanwhile the planner takes it for one row and may hand out tasks by sorting the
    whole campaign, with the anti-join, on every request (40 ms of database time per ranking
    measured at 2,000 tasks, against 5 ms with fresh statistics: bench/README.md).
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Task._meta.db_table}")
