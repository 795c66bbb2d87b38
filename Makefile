# Two commands for a fresh machine with Python 3.11:  make test   and   make demo
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The web image's environment: the runtime lock (no torch) plus the wheel built from this tree.
WEB_VENV := .venv-web
WEB_STAMP := $(WEB_VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install web-env wheel lock browser docs test lint js demo clean

# Everything for tests and training, from the lock file with hashes. torch comes first and pinned
# (the CPU wheel; an unpinned torch pulls gigabytes of CUDA), so the lock leaves it out.
$(STAMP): requirements/dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements/dev.txt
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

# The wheel users `pip install`; the web environment is rebuilt from it on every test run, so the
# deployment test runs the code of this tree, installed as a package, without torch.
wheel: install
	rm -rf dist
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .

$(WEB_STAMP): requirements/web.txt
	test -x $(WEB_VENV)/bin/python || $(PYTHON) -m venv $(WEB_VENV)
	$(WEB_VENV)/bin/pip install --quiet --no-deps --require-hashes -r requirements/web.txt
	touch $(WEB_STAMP)

web-env: $(WEB_STAMP) wheel
	$(WEB_VENV)/bin/pip install --quiet --no-deps --force-reinstall dist/*.whl
	$(WEB_VENV)/bin/pip check

# Re-resolve the locks after changing pyproject.toml (keeps current pins unless they must move).
LOCK := $(VENV)/bin/uv pip compile --quiet pyproject.toml --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --generate-hashes --no-emit-package torch \
	--find-links /opt/wheels --index-strategy unsafe-best-match
lock: install
	$(LOCK) -o requirements/web.txt
	$(LOCK) --extra train --extra ray --extra s3 -o requirements/train.txt  # the trainer image: a Ray node, S3
	$(LOCK) --extra dev -o requirements/dev.txt

# Debian's Chromium for the browser tests (Playwright drives it; no browser download) and Caddy,
# the TLS proxy of docker-compose.yml, for the deployment test.
browser:
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="chromium"; \
	command -v caddy >/dev/null 2>&1 || missing="$$missing caddy"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "the browser and deployment tests need Debian's packages: sudo apt-get install$$missing"; fi; fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run

# The page scripts: ESLint (pinned in package-lock.json, installed again only when the lock
# changes) and the unit tests of their pure modules under node's own test runner.
NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "the JavaScript lint and tests need Node.js 20.19+ and npm"; exit 1; }
	npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

js: $(NODE_STAMP)
	npx --no-install eslint static tests/js eslint.config.js
	node --test --test-reporter=spec tests/js/

test: install web-env browser lint js
	OMP_NUM_THREADS=1 RLHF_WEB_VENV=$(CURDIR)/$(WEB_VENV) $(PY) -m pytest $(PYTEST_ARGS)

DOCS := /usr/share/doc/python3/html
PRETRAIN_STEPS ?= 1500

# English text that can be had offline, with a permissive licence, for the demo model.
docs:
	@test -d $(DOCS) || { \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-doc >/dev/null; \
	  else echo "the demo model pretrains on Debian's python3-doc: sudo apt-get install python3-doc"; fi; }

# Ctrl+C stops the server and the worker: the trap removes itself before it signals them, so it
# never runs twice, and waits for both to exit.
demo: install docs
	$(PY) manage.py migrate --noinput
	if [ -d $(DOCS) ]; then \
	  OMP_NUM_THREADS=2 $(PY) manage.py build_tiny_model --pretrain-dir $(DOCS) --pretrain-steps $(PRETRAIN_STEPS); \
	else $(PY) manage.py build_tiny_model; fi
	$(PY) manage.py load_demo
	$(PY) manage.py demo_round
	@echo "Starting web, Celery worker (queues default and gpu) and beat."
	@pids=""; \
	stop() { trap - INT TERM EXIT; kill $$pids 2>/dev/null; wait $$pids 2>/dev/null; echo "demo stopped"; }; \
	trap stop INT TERM EXIT; \
	$(VENV)/bin/celery --quiet -A config worker -B -Q default,gpu --concurrency 1 --loglevel WARNING \
		& pids="$$pids $$!"; \
	$(PY) manage.py runserver --noreload $(HOST):$(PORT) & pids="$$pids $$!"; \
	$(PY) manage.py load_demo --url http://$(HOST):$(PORT)/ --wait 120 || exit 1; \
	wait

clean:
	rm -rf $(VENV) $(WEB_VENV) var dist staticfiles node_modules
