#!/usr/bin/env python
"""Django's command-line utility for administrative tasks (``rlhf-annotate`` when installed)."""

from config.cli import main

if __name__ == "__main__":
    main()
