"""Build the tiny local default model (no hub needed) and register it as a base version."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.terminal import Progress
from training.ml.tiny import build_tiny_model, collect_pretrain_files
from training.models import ModelVersion
from training.services import model_version_register


class Command(BaseCommand):
    help = (
        "Build a tiny decoder and byte-level BPE tokenizer from the bundled text (cached), "
        "optionally pretrain it briefly on local documents, and register it as a base model."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--out", type=Path, default=Path(settings.DEFAULT_BASE_MODEL))
        parser.add_argument(
            "--pretrain-dir",
            type=Path,
            default=None,
            help="a directory of .txt/.html files (e.g. /usr/share/doc/python3.11/html)",
        )
        parser.add_argument("--pretrain-steps", type=int, default=0)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--name", default="tiny-base")

    def handle(self, *args, out: Path, pretrain_dir, pretrain_steps, seed, name, **options):
        files = None
        if pretrain_steps:
            if pretrain_dir is None or not pretrain_dir.is_dir():
                raise CommandError(f"--pretrain-dir {pretrain_dir} is not a directory")
            files = collect_pretrain_files(pretrain_dir)
            if not files:
                raise CommandError(f"no .txt or .html files under {pretrain_dir}")
        bar: Progress | None = None

        def progress(step: int, total: int, metrics: dict) -> None:
            # Called only while pretraining: a model already built with these settings is
            # reused and prints nothing of it.
            nonlocal bar
            if bar is None:
                self.stdout.write(
                    f"Pretraining the tiny model on {len(files)} files (once; later runs reuse it)."
                )
                bar = Progress(self.stdout, total=total, label="pretraining")
            loss = metrics.get("pretrain/loss")
            bar.update(step, f"loss {loss:.3f}" if loss is not None else "")

        path = build_tiny_model(
            out,
            seed=seed,
            pretrain_files=files,
            pretrain_steps=pretrain_steps,
            on_progress=progress,
        )
        if bar is not None:
            bar.close()
        version = ModelVersion.objects.filter(kind="base", path=str(path)).first()
        if version is None:
            version = model_version_register(kind="base", name=name, path=str(path))
        self.stdout.write(
            self.style.SUCCESS(f"base model {version.name} (#{version.pk}) at {path}")
        )
