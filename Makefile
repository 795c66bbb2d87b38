# Two commands for a fresh machine with Python 3.11:  make test   and   make demo
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install browser docs test lint demo clean

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch pulls gigabytes of CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need Debian's chromium: sudo apt-get install chromium"; fi; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run

test: install browser lint
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

DOCS := /usr/share/doc/python3/html
PRETRAIN_STEPS ?= 1500

# English text that can be had offline, with a permissive licence, for the demo model.
docs:
	@test -d $(DOCS) || { \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-doc >/dev/null; \
	  else echo "the demo model pretrains on Debian's python3-doc: sudo apt-get install python3-doc"; fi; }

demo: install docs
	$(PY) manage.py migrate --noinput
	@echo "Building the tiny demo model (a few CPU minutes the first time, then cached)."
	if [ -d $(DOCS) ]; then \
	  OMP_NUM_THREADS=2 $(PY) manage.py build_tiny_model --pretrain-dir $(DOCS) --pretrain-steps $(PRETRAIN_STEPS); \
	else $(PY) manage.py build_tiny_model; fi
	$(PY) manage.py load_demo --url http://$(HOST):$(PORT)/
	@echo "Starting web, Celery worker (queues default and gpu) and beat; Ctrl+C stops all."
	trap 'kill 0' EXIT INT TERM; \
	$(VENV)/bin/celery -A config worker -B -Q default,gpu --concurrency 1 --loglevel INFO \
		--schedule var/celerybeat-schedule & \
	$(PY) manage.py runserver $(HOST):$(PORT)

clean:
	rm -rf $(VENV) var
