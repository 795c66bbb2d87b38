"""``python -m config <command>``: the same as ``manage.py`` and ``rlhf-annotate``."""

from config.cli import main

main()
