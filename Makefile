# Two commands for a fresh machine with Python 3.11:  make test   and   make demo
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install test lint demo run worker gpu-worker clean

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch pulls gigabytes of CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run

test: install lint
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py load_demo --url http://$(HOST):$(PORT)/
	@echo "Starting web, Celery worker (queues default and gpu) and beat; Ctrl+C stops all."
	trap 'kill 0' EXIT INT TERM; \
	$(VENV)/bin/celery -A config worker -B -Q default,gpu --concurrency 1 --loglevel INFO \
		--schedule var/celerybeat-schedule & \
	$(PY) manage.py runserver $(HOST):$(PORT)

clean:
	rm -rf $(VENV) var
