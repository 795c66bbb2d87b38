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
import re
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser as User
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import AccountState
from annotation import importing
from annotation.errors import Conflict, InvalidInput
from annotation.models import (
    Assignment,
    Campaign,
    Completion,
    ImportJob,
    Membership,
    Prompt,
    Ranking,
    RankingItem,
    Task,
    TaskCompletion,
)
from annotation.pairs import FAIL, Label
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
    created: list[dict] = field(default_factory=list)
    """every task created, ``{"task": id, "external_id": the prompt's id in the file}``, in
    the file's order"""
    warnings: dict[str, int] = field(default_factory=dict)
    """what the campaign's options let through: ``empty_completions``,
    ``identical_completions``"""


def _parse_tasks(campaign: Campaign, data: bytes, *, filename: str, fmt: str | None):
    warnings = importing.Warnings()
    records = importing.parse_import(
        data,
        fmt=fmt or importing.detect_format(filename),
        completions_per_task=campaign.completions_per_task,
        max_text_chars=settings.IMPORT_MAX_TEXT_CHARS,
        max_bytes=settings.IMPORT_MAX_BYTES,
        default_source=f"import:{filename}"[:200],
        allow_ties=campaign.allow_ties,
        allow_fail=campaign.allow_fail,
        allow_empty=campaign.allow_empty_completions,
        allow_identical=campaign.allow_identical_completions,
        warnings=warnings,
    )
    return records, warnings


def campaign_import(
    *, campaign: Campaign, data: bytes, filename: str, fmt: str | None = None
) -> ImportResult:
    """Import prompts (with or without completions) from JSONL or CSV, all or nothing.

    Raises ``importing.ImportFailed`` with line-numbered errors; nothing is written then.
    Empty and identical completions pass only where the campaign allows them, counted in the
    result's ``warnings``.
    """
    records, warnings = _parse_tasks(campaign, data, filename=filename, fmt=fmt)
    return _store_import(campaign=campaign, records=records, warnings=warnings)


def campaign_import_file(
    *, campaign: Campaign, file: Any, filename: str, fmt: str | None = None
) -> ImportResult:
    """Import an uploaded file: its size is checked before it is read into memory."""
    size = getattr(file, "size", None)
    if size is not None:
        importing.check_size(size, max_bytes=settings.IMPORT_MAX_BYTES)
    return campaign_import(campaign=campaign, data=file.read(), filename=filename, fmt=fmt)


def campaign_import_upload(
    *,
    campaign: Campaign,
    file: Any,
    filename: str,
    fmt: str | None,
    created_by: User | None,
    kind: str = ImportJob.Kind.TASKS,
    options: dict | None = None,
) -> ImportResult | RankingImportResult | ImportJob:
    """Import an upload now when it is small; queue an :class:`ImportJob` for a worker when it
    is larger than ``IMPORT_BACKGROUND_BYTES`` (returned as it is: queued).

    ``kind`` ``"rankings"`` imports existing rankings (:func:`campaign_import_rankings`, with
    ``options``: its keyword options) instead of tasks."""
    options = dict(options or {})
    size = getattr(file, "size", None)
    if size is not None:
        importing.check_size(size, max_bytes=settings.IMPORT_MAX_BYTES)
    if kind == ImportJob.Kind.RANKINGS:
        _check_ranking_options(options)
    if size is None or size <= settings.IMPORT_BACKGROUND_BYTES:
        if kind == ImportJob.Kind.RANKINGS:
            return campaign_import_rankings(
                campaign=campaign, data=file.read(), filename=filename, fmt=fmt, **options
            )
        return campaign_import_file(campaign=campaign, file=file, filename=filename, fmt=fmt)
    if fmt is None:
        importing.detect_format(filename)  # refused at once, not after the queue
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("cannot import into a closed campaign", field="campaign")
    with transaction.atomic():
        job = ImportJob.objects.create(
            campaign=campaign,
            created_by=created_by,
            kind=kind,
            options=options,
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
    fmt = job.format or None
    try:
        if job.kind == ImportJob.Kind.RANKINGS:
            rankings, warnings = _parse_rankings(
                campaign, bytes(job.data), filename=job.filename, fmt=fmt
            )
            ImportJob.objects.filter(pk=job.pk).update(
                stage=job.Stage.STORING, records=len(rankings)
            )
            result = _store_rankings(
                campaign=campaign, records=rankings, warnings=warnings, **job.options
            )
        else:
            records, warnings = _parse_tasks(
                campaign, bytes(job.data), filename=job.filename, fmt=fmt
            )
            ImportJob.objects.filter(pk=job.pk).update(
                stage=job.Stage.STORING, records=len(records)
            )
            result = _store_import(campaign=campaign, records=records, warnings=warnings)
    except importing.ImportFailed as exc:
        errors = [asdict(e) for e in exc.errors]
        if exc.truncated:
            errors.append(
                {
                    "line": 0,
                    "field": "file",
                    "message": f"at least {len(exc.errors)} errors: only these are listed",
                }
            )
        return _import_finished(job, errors=errors)
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
def _store_import(
    *,
    campaign: Campaign,
    records: Sequence[importing.ParsedPrompt],
    warnings: importing.Warnings | None = None,
) -> ImportResult:
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
    by_prompt = {task.prompt_id: task.pk for task in tasks}
    created = sorted(
        (
            (r.line, {"task": by_prompt[p.pk], "external_id": p.external_id})
            for p, r in with_completions
        ),
        key=lambda pair: pair[0],
    )
    return ImportResult(
        prompts=len(prompts),
        tasks=len(tasks),
        completions=len(completions),
        gold_tasks=sum(g is not None for g in gold),
        created=[entry for _, entry in created],
        warnings=asdict(warnings or importing.Warnings()),
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


# --- Rankings in ---------------------------------------------------------------------------------

NEW_LABELLERS = ("inactive", "refuse")
"""What a rankings import does with a labeller it does not know: create the account, inactive
(it cannot log in until an admin activates it and sets a password), or refuse the file."""
TASK_OVERLAP = ("campaign", "rankings")
"""How many labellers an imported task is for: ``campaign``, the campaign's overlap k (k_max
with adaptive overlap), a task with fewer rankings staying open for more; ``rankings``, exactly
as many as ranked it in the file (its own overlap, any number: the task counts complete)."""


@dataclass(frozen=True, slots=True)
class RankingImportResult:
    rankings: int
    tasks_created: int
    tasks_matched: int
    prompts_created: int
    completions_created: int
    labellers_created: list[str] = field(default_factory=list)
    created: list[dict] = field(default_factory=list)
    """every task created, ``{"task": id, "external_id": its prompt's id}``, in file order"""
    warnings: dict[str, int] = field(default_factory=dict)


def _check_ranking_options(options: dict) -> None:
    unknown = set(options) - {"new_labellers", "task_overlap"}
    if unknown:
        raise InvalidInput("unknown option", field=sorted(unknown)[0])
    if options.get("new_labellers", "inactive") not in NEW_LABELLERS:
        raise InvalidInput(f"must be one of {', '.join(NEW_LABELLERS)}", field="new_labellers")
    if options.get("task_overlap", "campaign") not in TASK_OVERLAP:
        raise InvalidInput(f"must be one of {', '.join(TASK_OVERLAP)}", field="task_overlap")


def _parse_rankings(campaign: Campaign, data: bytes, *, filename: str, fmt: str | None):
    warnings = importing.Warnings()
    records = importing.parse_rankings(
        data,
        fmt=fmt or importing.detect_format(filename),
        completions_per_task=campaign.completions_per_task,
        max_text_chars=settings.IMPORT_MAX_TEXT_CHARS,
        max_bytes=settings.IMPORT_MAX_BYTES,
        default_source=f"import:{filename}"[:200],
        allow_ties=campaign.allow_ties,
        allow_fail=campaign.allow_fail,
        allow_empty=campaign.allow_empty_completions,
        allow_identical=campaign.allow_identical_completions,
        strength_scale=getattr(campaign, "strength_scale", "none"),
        warnings=warnings,
    )
    return records, warnings


def campaign_import_rankings(
    *,
    campaign: Campaign,
    data: bytes,
    filename: str,
    fmt: str | None = None,
    new_labellers: str = "inactive",
    task_overlap: str = "campaign",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> RankingImportResult:
    """Import existing rankings (README "Rankings in"), all or nothing.

    Each line is one labeller's ranking of one prompt's completions. Lines naming the same
    prompt (its ``prompt_id``, else its text) and the same completions are rankings of one task:
    a real task of the campaign with that prompt and those completions when there is one (its
    rankings are added to those it has), else a task created for them. Labellers are named by
    username or by ``labeller_external_id`` (their id in the other tool, kept on the account);
    unknown ones are created inactive, or refused with ``new_labellers="refuse"``. A task takes
    at most the campaign's overlap k in rankings (open leases count), or with
    ``task_overlap="rankings"`` exactly the rankings the file gives it.

    Raises ``importing.ImportFailed`` with line-numbered errors (the file's, then those only the
    database can tell: a labeller who already ranked the task, a task over its overlap);
    nothing is written then. ``on_progress(stage, done, total)`` is told how far it got.
    """
    _check_ranking_options({"new_labellers": new_labellers, "task_overlap": task_overlap})
    records, warnings = _parse_rankings(campaign, data, filename=filename, fmt=fmt)
    return _store_rankings(
        campaign=campaign,
        records=records,
        warnings=warnings,
        new_labellers=new_labellers,
        task_overlap=task_overlap,
        on_progress=on_progress,
    )


def _labellers_for(
    records: Sequence[importing.ParsedRanking], *, new_labellers: str
) -> tuple[dict[tuple[str, str], User], list[str]]:
    """(username or external id) -> account for every labeller the records name, creating the
    missing ones inactive; and the usernames created. Refused ones raise ``ImportFailed``."""
    user_model = get_user_model()
    usernames = {r.labeller for r in records if r.labeller}
    externals = {r.labeller_external_id for r in records if not r.labeller}
    found: dict[tuple[str, str], User] = {
        ("username", u.username): u for u in user_model.objects.filter(username__in=usernames)
    }
    for state in AccountState.objects.filter(external_id__in=externals).select_related("user"):
        found[("external", state.external_id)] = state.user
    errors: list[importing.LineError] = []
    missing: dict[tuple[str, str], int] = {}
    for record in records:
        key = (
            ("username", record.labeller)
            if record.labeller
            else ("external", record.labeller_external_id)
        )
        if key not in found and key not in missing:
            missing[key] = record.line
    if missing and new_labellers == "refuse":
        for (kind, name), line in missing.items():
            field_name = "labeller" if kind == "username" else "labeller_external_id"
            errors.append(importing.LineError(line, field_name, f"no account {name!r}"))
    created: list[str] = []
    taken = {name.lower() for _, name in missing if _ == "username"}
    for (kind, name), line in missing.items():
        if new_labellers == "refuse":
            break
        username = name if kind == "username" else _username_for(name, taken)
        try:
            user_model.username_validator(username)
        except ValidationError as exc:
            errors.append(importing.LineError(line, "labeller", " ".join(exc.messages)))
            continue
        if user_model.objects.filter(username__iexact=username).exists():
            errors.append(
                importing.LineError(
                    line, "labeller", f"{username!r} differs only in case from an account"
                )
            )
            continue
        user = user_model(username=username, is_active=False)
        user.set_unusable_password()
        user.save()
        if kind == "external":
            AccountState.objects.update_or_create(user=user, defaults={"external_id": name})
        found[(kind, name)] = user
        created.append(username)
    if errors:
        raise importing.ImportFailed(errors[: importing.MAX_ERRORS])
    return found, created


def _username_for(external_id: str, taken: set[str]) -> str:
    """A free username for a labeller known only by an external id: the id with the characters
    usernames refuse replaced, prefixed ``ext-``, numbered when taken."""
    cleaned = re.sub(r"[^\w.@+-]", "-", external_id)[:140] or "labeller"
    base = f"ext-{cleaned}"
    user_model = get_user_model()
    candidate, number = base, 1
    while (
        candidate.lower() in taken or user_model.objects.filter(username__iexact=candidate).exists()
    ):
        number += 1
        candidate = f"{base}-{number}"
    taken.add(candidate.lower())
    return candidate


def _existing_tasks(
    campaign: Campaign, keys: set[tuple[str, str, tuple[str, ...]]]
) -> dict[tuple, tuple[Task, list[Completion]]]:
    """The campaign's real tasks that match task keys (prompt, completion texts), with their
    completions in task order, locked (``FOR UPDATE``): their counts change here."""
    ids = {name for kind, name, _ in keys if kind == "id"}
    texts = {name for kind, name, _ in keys if kind == "text"}
    prompts = Prompt.objects.filter(campaign=campaign).filter(
        Q(external_id__in=ids) | Q(external_id="", text__in=texts)
    )
    tasks = list(
        Task.objects.select_for_update(of=("self",))
        .filter(campaign=campaign, is_gold=False, prompt__in=prompts)
        .select_related("prompt")
        .order_by("id")
    )
    slots: dict[int, list[Completion]] = defaultdict(list)
    for tc in (
        TaskCompletion.objects.filter(task__in=[t.pk for t in tasks])
        .select_related("completion")
        .order_by("task_id", "position")
    ):
        slots[tc.task_id].append(tc.completion)
    found: dict[tuple, tuple[Task, list[Completion]]] = {}
    for task in tasks:
        prompt = task.prompt
        name = ("id", prompt.external_id) if prompt.external_id else ("text", prompt.text)
        completions = slots[task.pk]
        key = (*name, tuple(c.text for c in completions))
        if key in keys:
            found.setdefault(key, (task, completions))
    return found


@transaction.atomic
def _store_rankings(
    *,
    campaign: Campaign,
    records: Sequence[importing.ParsedRanking],
    warnings: importing.Warnings | None = None,
    new_labellers: str = "inactive",
    task_overlap: str = "campaign",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> RankingImportResult:
    """Store parsed rankings (see :func:`campaign_import_rankings`).

    Locks the campaign row (``FOR NO KEY UPDATE``, as the task import does), then the matched
    tasks (their counts change): a labeller taking a lease on one of them meanwhile waits.
    """
    report = on_progress or (lambda stage, done, total: None)
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    if campaign.status == Campaign.Status.CLOSED:
        raise Conflict("cannot import into a closed campaign", field="campaign")
    report("labellers", 0, len(records))
    users, created_users = _labellers_for(records, new_labellers=new_labellers)

    def user_of(record: importing.ParsedRanking) -> User:
        if record.labeller:
            return users[("username", record.labeller)]
        return users[("external", record.labeller_external_id)]

    by_task: dict[tuple, list[importing.ParsedRanking]] = defaultdict(list)
    for record in records:
        by_task[record.task_key].append(record)
    existing = _existing_tasks(campaign, set(by_task))

    # Prompts and tasks that do not exist yet, in the order the file first names them.
    new_keys = [key for key in by_task if key not in existing]
    prompt_rows: dict[tuple[str, str], Prompt] = {}
    known_prompts = {
        ("id", p.external_id) if p.external_id else ("text", p.text): p
        for p in Prompt.objects.filter(campaign=campaign).filter(
            Q(external_id__in={k[1] for k in new_keys if k[0] == "id"})
            | Q(external_id="", text__in={k[1] for k in new_keys if k[0] == "text"})
        )
    }
    fresh: list[Prompt] = []
    for key in new_keys:
        name = key[:2]
        if name in prompt_rows:
            continue
        if name in known_prompts:
            prompt_rows[name] = known_prompts[name]
            continue
        prompt = by_task[key][0].prompt
        row = Prompt(
            campaign=campaign,
            external_id=prompt.external_id,
            text=prompt.text,
            messages=prompt.messages,
            metadata=prompt.metadata,
        )
        prompt_rows[name] = row
        fresh.append(row)
    Prompt.objects.bulk_create(fresh)
    completions = Completion.objects.bulk_create(
        [
            Completion(
                prompt=prompt_rows[key[:2]], text=c.text, source=c.source, metadata=c.metadata
            )
            for key in new_keys
            for c in by_task[key][0].prompt.completions
        ]
    )
    n = campaign.completions_per_task
    groups = [
        (prompt_rows[key[:2]], completions[i * n : (i + 1) * n]) for i, key in enumerate(new_keys)
    ]
    new_tasks = tasks_create(campaign=campaign, groups=groups)
    for key, task, (_, group) in zip(new_keys, new_tasks, groups, strict=True):
        existing[key] = (task, list(group))
    report("tasks", len(new_tasks), len(by_task))

    # Who already holds each matched task: one ranking (or lease) per labeller and task.
    held = set(
        Assignment.objects.filter(task__in=[t.pk for t, _ in existing.values()]).values_list(
            "task_id", "labeller_id"
        )
    )
    errors: list[importing.LineError] = []
    cap = campaign.overlap
    changed: list[Task] = []
    for key, task_records in by_task.items():
        task, _ = existing[key]
        fresh_task = task.active_count == 0 and task.pk in {t.pk for t in new_tasks}
        for record in task_records:
            if (task.pk, user_of(record).pk) in held:
                errors.append(
                    importing.LineError(
                        record.line,
                        "labeller",
                        f"{user_of(record).get_username()!r} already has this task "
                        f"(task {task.pk}) in the campaign",
                    )
                )
        total = task.active_count + len(task_records)
        if task_overlap == "campaign" and total > max(cap, task.target_overlap):
            line = task_records[max(0, max(cap, task.target_overlap) - task.active_count)].line
            errors.append(
                importing.LineError(
                    line,
                    "labeller",
                    f"task {'(new)' if fresh_task else task.pk} would have {total} rankings or "
                    f"leases; the campaign's overlap is {cap} (task_overlap=rankings gives each "
                    "imported task its own)",
                )
            )
        task.target_overlap = (
            max(task.target_overlap, total) if task_overlap == "campaign" else max(total, 1)
        )
        task.active_count = total
        task.submitted_count += len(task_records)
        changed.append(task)
    if errors:
        errors.sort(key=lambda e: e.line)
        raise importing.ImportFailed(
            errors[: importing.MAX_ERRORS], truncated=len(errors) > importing.MAX_ERRORS
        )
    Task.objects.bulk_update(
        changed, ["target_overlap", "active_count", "submitted_count"], batch_size=1000
    )

    # One submitted assignment and one ranking per line; its items, one per completion.
    now = timezone.now()
    assignments: list[Assignment] = []
    for record in records:
        task, group = existing[record.task_key]
        finished = record.created_at or now
        started = finished - timedelta(milliseconds=max(record.time_spent_ms, 1))
        assignments.append(
            Assignment(
                task=task,
                campaign=campaign,
                labeller=user_of(record),
                status=Assignment.Status.SUBMITTED,
                display_order=[c.pk for c in _ranked_order(record, group)],
                assigned_at=started,
                lease_expires_at=finished,
                finished_at=finished,
            )
        )
    Assignment.objects.bulk_create(assignments, batch_size=1000)
    report("rankings", 0, len(records))
    rankings = Ranking.objects.bulk_create(
        [
            Ranking(
                assignment=assignment,
                task=assignment.task,
                campaign=campaign,
                labeller=assignment.labeller,
                time_spent_ms=record.time_spent_ms,
                comment=record.comment,
                strength=None if record.strength is None else list(record.strength),
                justification=record.justification,
            )
            for assignment, record in zip(assignments, records, strict=True)
        ],
        batch_size=1000,
    )
    for ranking, assignment in zip(rankings, assignments, strict=True):
        ranking.created_at = assignment.finished_at  # bulk_create set it to now (auto_now_add)
    Ranking.objects.bulk_update(rankings, ["created_at"], batch_size=1000)
    items: list[RankingItem] = []
    for ranking, record in zip(rankings, records, strict=True):
        _, group = existing[record.task_key]
        for completion, label in zip(_ranked_order(record, group), record.labels, strict=True):
            failed = label == FAIL
            items.append(
                RankingItem(
                    ranking=ranking,
                    completion=completion,
                    rank=None if failed else label,
                    failed=failed,
                )
            )
    RankingItem.objects.bulk_create(items, batch_size=2000)
    report("rankings", len(records), len(records))

    members = set(campaign.memberships.values_list("user_id", flat=True))
    Membership.objects.bulk_create(
        [
            Membership(campaign=campaign, user_id=user_id)
            for user_id in sorted({u.pk for u in users.values()} - members)
        ],
        ignore_conflicts=True,
    )
    by_prompt_line = sorted(
        (by_task[key][0].line, {"task": task.pk, "external_id": key[1] if key[0] == "id" else ""})
        for key, task in zip(new_keys, new_tasks, strict=True)
    )
    return RankingImportResult(
        rankings=len(rankings),
        tasks_created=len(new_tasks),
        tasks_matched=len(by_task) - len(new_tasks),
        prompts_created=len(fresh),
        completions_created=len(completions),
        labellers_created=created_users,
        created=[entry for _, entry in by_prompt_line],
        warnings=asdict(_task_warnings([key[2] for key in new_keys])),
    )


def _task_warnings(tasks: Sequence[Sequence[str]]) -> importing.Warnings:
    """Empty and identical completions among tasks' texts, counted once per task (a rankings
    file repeats a task's completions on each of its lines)."""
    warnings = importing.Warnings()
    for texts in tasks:
        stripped = [text.strip() for text in texts]
        warnings.empty_completions += stripped.count("")
        filled = [text for text in stripped if text]
        warnings.identical_completions += len(filled) - len(set(filled))
    return warnings


def _ranked_order(record: importing.ParsedRanking, group: Sequence[Completion]) -> list[Completion]:
    """The task's completions in the order the record lists them (its texts, matched in task
    order: identical texts go to the task's completions in turn)."""
    pool: dict[str, list[Completion]] = defaultdict(list)
    for completion in group:
        pool[completion.text].append(completion)
    return [pool[c.text].pop(0) for c in record.prompt.completions]
