"""Mutation testing (cosmic-ray): the one-line changes to the pure modules, the assignment service
and PPO that their tests do not notice. A bench tool, not CI: it takes about an hour on 2 cores.

    .venv/bin/pip install cosmic-ray            # not in the locks
    .venv/bin/python bench/mutation.py --sample 80 consensus=50 assignment=40 [--modules ppo]
    .venv/bin/python bench/mutation.py --report   # the counts and survivors again, no run

cosmic-ray writes each mutant into the source file and runs a test command, so everything
happens in a copy of the working tree (``--workdir``: the files git tracks plus the untracked
ones it does not ignore). For each module in MODULES: ``cosmic-ray init`` lists every mutant;
the operators in SKIPPED_OPERATORS are marked skipped (noise: an arithmetic operator turned
into a shift or a bitwise one, an ``is`` comparison, a variable swapped for another), and so
are mutants inside type annotations (never evaluated here: equivalent by construction); with
``--sample N`` all but N of the rest, drawn by ``random.Random(seed)`` from the mutants in
source order, are marked skipped too, so a rerun with the same source and seed draws the same
ones; ``cosmic-ray baseline`` checks the unmutated tests pass; ``cosmic-ray exec`` runs the
rest, one pytest process per mutant on the module's own test files only (``-x``, Hypothesis
seed 0 and no example database, so a verdict does not depend on the mutants before it).

A mutant is *killed* when a test fails, *timeout* when the tests ran past ``--timeout``
(cosmic-ray counts that as killed; reported apart), *survived* when every test passed. The
session of each module is ``WORKDIR/<module>.sqlite``; running again resumes what is left
(``--fresh`` starts over). Two runs side by side need two workdirs.
Tests run on the database DATABASE_URL names (SQLite in memory without it: the PostgreSQL-only
tests then skip, among them the assignment's patience with every task locked).
tests/annotation/test_oracles.py reads ``shared/data`` beside the checkout and skips without
it, hence the default workdir beside the checkout. Figures and the survivors worth a test:
bench/README.md, "Mutation testing".
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "pairs": ("annotation/pairs.py", ("tests/annotation/test_pairs.py",)),
    "agreement": (
        "annotation/agreement.py",
        ("tests/annotation/test_agreement.py", "tests/annotation/test_oracles.py"),
    ),
    "consensus": ("annotation/consensus.py", ("tests/annotation/test_consensus.py",)),
    "assignment": (
        "annotation/services/assignment.py",
        (
            "tests/annotation/test_assignment.py",
            "tests/annotation/test_gold.py",  # gold draws and onboarding are assignment's
            "tests/annotation/test_concurrency.py",  # PostgreSQL only
        ),
    ),
    "ppo": ("training/ml/ppo.py", ("tests/training/ml/test_ppo.py",)),
}
"""Each module and the test files that are its own (what the mutant runs against)."""

SKIPPED_OPERATORS = (
    r"core/ReplaceBinaryOperator_(Add|Sub|Mul|Div)_(Pow|Mod|FloorDiv|LShift|RShift|BitOr|BitAnd|BitXor)",
    r"core/ReplaceComparisonOperator_\w+_(Is|IsNot)$",
    r"core/Variable(Inserter|Replacer)",
)
"""Mutants not worth an hour: an arithmetic operator turned into an exotic one dies on the
first float or gives nonsense any test catches; ``is`` for ``==`` on small ints and
strings is interpreter detail; a variable swapped for a random other one mostly breaks types."""


def _cosmic_ray() -> str:
    path = shutil.which("cosmic-ray", path=str(Path(sys.executable).parent))
    if path is None:
        raise SystemExit("cosmic-ray is not installed: pip install cosmic-ray (a bench tool)")
    return path


def copy_tree(workdir: Path) -> None:
    """The working tree as it is (uncommitted changes too) into ``workdir``, over what is there
    (a mutant left behind by an interrupted run included); the sessions stay."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if source.is_file():
            target = workdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def write_config(workdir: Path, name: str, timeout: float) -> Path:
    module, tests = MODULES[name]
    pytest = [
        sys.executable,
        *("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0"),
        *tests,
    ]
    # No example database: a failing example saved for one mutant would be replayed for the next.
    command = f"rm -rf .hypothesis && exec {shlex.join(pytest)}"
    config = workdir / f"{name}.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {_toml_string(shlex.join(['sh', '-c', command]))}\n"
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    return config


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def init_session(workdir: Path, name: str, config: Path, sample: int | None, seed: int) -> Path:
    """Every mutant listed, the noise and the ones outside the sample marked skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    session = workdir / f"{name}.sqlite"
    if session.exists():
        return session  # resume
    subprocess.run([_cosmic_ray(), "init", str(config), str(session)], cwd=workdir, check=True)
    noise = re.compile("|".join(f"(?:{pattern})" for pattern in SKIPPED_OPERATORS))
    hints = annotation_spans(workdir / MODULES[name][0])
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = sorted(db.pending_work_items, key=_position)
        reasons = {}
        for item in items:
            mutation = item.mutations[0]
            if noise.match(mutation.operator_name):
                reasons[item.job_id] = "operator"
            elif any(start <= tuple(mutation.start_pos) < end for start, end in hints):
                reasons[item.job_id] = "annotation"  # a string at run time: equivalent
        kept = [item for item in items if item.job_id not in reasons]
        chosen = kept if sample is None or sample >= len(kept) else _draw(kept, sample, seed)
        chosen_ids = {item.job_id for item in chosen}
        for item in items:
            if item.job_id not in chosen_ids:
                reason = reasons.get(item.job_id, "sample")
                db.set_result(
                    item.job_id,
                    WorkResult(output=f"skipped: {reason}", worker_outcome=WorkerOutcome.SKIPPED),
                )
    print(f"{name}: {len(items)} mutants, {len(kept)} after the operator and annotation "
          f"filters, running {len(chosen_ids)}", flush=True)  # fmt: skip
    return session


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the module's type annotations are, as ((line, column), (end line, end column)).
    With ``from __future__ import annotations`` they are never evaluated, so a mutant inside
    one (``int | None`` to ``int & None``) cannot be killed by any test."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    spans = []
    for node in ast.walk(tree):
        hints = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            hints.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            hints.append(node.returns)
        spans += [
            ((hint.lineno, hint.col_offset), (hint.end_lineno, hint.end_col_offset))
            for hint in hints
        ]
    return spans


def _position(item) -> tuple:
    mutation = item.mutations[0]
    return (tuple(mutation.start_pos), mutation.operator_name, mutation.occurrence)


def _draw(items: list, sample: int, seed: int) -> list:
    return sorted(random.Random(seed).sample(items, sample), key=_position)


def run_module(workdir: Path, name: str, *, sample: int | None, seed: int, timeout: float) -> None:
    config = write_config(workdir, name, timeout)
    session = init_session(workdir, name, config, sample, seed)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    baseline = subprocess.run(
        [_cosmic_ray(), "baseline", str(config)], cwd=workdir, env=env, capture_output=True
    )
    if baseline.returncode != 0:
        raise SystemExit(f"{name}: the unmutated tests fail\n{baseline.stdout.decode()[-3000:]}")
    print(f"{name}: baseline passed in {time.monotonic() - started:.0f} s", flush=True)
    subprocess.run(
        [_cosmic_ray(), "exec", str(config), str(session)], cwd=workdir, env=env, check=True
    )
    print(f"{name}: done in {(time.monotonic() - started) / 60:.1f} min", flush=True)


def report(workdir: Path, name: str) -> None:
    """Counts and each survivor with its line and diff."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    session = workdir / f"{name}.sqlite"
    if not session.exists():
        print(f"## {name}: no session in {workdir}")
        return
    counts: Counter[str] = Counter()
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                counts["skipped: " + (result.output or "").removeprefix("skipped: ")] += 1
            elif result.worker_outcome != WorkerOutcome.NORMAL:
                counts[f"error ({result.worker_outcome})"] += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                survivors.append((item, result))
            elif result.test_outcome == TestOutcome.KILLED:
                counts["timeout" if result.output == "timeout" else "killed"] += 1
            else:
                counts[str(result.test_outcome)] += 1
        counts["pending"] = len(list(db.pending_work_items))
    module, tests = MODULES[name]
    print(f"## {name}: {module} against {' '.join(tests)}")
    print("   " + ", ".join(f"{key} {value}" for key, value in sorted(counts.items())))
    for item, result in sorted(survivors, key=lambda pair: _position(pair[0])):
        mutation = item.mutations[0]
        print(f"   survived: line {mutation.start_pos[0]} {mutation.operator_name}")
        for line in (result.diff or "").splitlines():
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
                print(f"      {line}")


def _samples(values: list[str]) -> dict[str, int]:
    """``["80", "agreement=40"]`` → ``{"": 80, "agreement": 40}`` ("" for every module)."""
    samples = {}
    for value in values:
        name, _, count = value.rpartition("=")
        if name and name not in MODULES:
            raise SystemExit(f"--sample {value}: no module {name!r}")
        samples[name] = int(count)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=list(MODULES))
    parser.add_argument(
        "--sample",
        nargs="+",
        default=[],
        metavar="N|MODULE=N",
        help="mutants per module, for all (N) or one (MODULE=N); default: every one",
    )
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO.parent / f"{REPO.name}-mutation",
        help="where the copy goes (default: beside the checkout, so that test_oracles.py finds "
        "../shared/data as it does from the checkout)",
    )
    parser.add_argument("--fresh", action="store_true", help="start over: drop the sessions")
    parser.add_argument("--report", action="store_true", help="only print the results so far")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if workdir == REPO or REPO in workdir.parents:
        raise SystemExit("--workdir must be outside the checkout: the mutants are written there")
    if args.fresh and args.workdir.exists():
        shutil.rmtree(args.workdir)
    samples = _samples(args.sample)
    if not args.report:
        copy_tree(args.workdir)
        for name in args.modules:
            sample = samples.get(name, samples.get(""))
            run_module(args.workdir, name, sample=sample, seed=args.seed, timeout=args.timeout)
    for name in args.modules:
        report(args.workdir, name)


if __name__ == "__main__":
    main()
