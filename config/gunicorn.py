"""gunicorn's settings for ``gunicorn config.wsgi -c python:config.gunicorn`` (docker-compose.yml).

Sync workers with a few threads each: a labeller's request is a handful of short statements
(bench/README.md, "Labelling under load": 3 workers x 1 thread on 2 cores served 32 labellers).
"""

from __future__ import annotations

import os

bind = [f"0.0.0.0:{os.environ.get('PORT', '8000')}"]
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# The same proxies Django trusts (config/proxy.py): only their X-Forwarded-Proto sets the scheme.
forwarded_allow_ips = os.environ.get("DJANGO_TRUSTED_PROXIES", "")
accesslog = "-"
# Heartbeat files in memory, not on a container's overlay filesystem (which can stall workers).
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"
