"""``rlhf-annotate <command>``: Django's ``manage.py`` for the installed package.

``manage.py`` in a checkout and the console script of an installed wheel are the same entry point.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line  # once the settings module is set

    execute_from_command_line(sys.argv)
