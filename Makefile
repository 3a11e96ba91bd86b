# The front door. `make serve` and `make test` work on a fresh machine: they create the virtual
# environment, install the pinned dependencies, train the default model if the store has none.
# Each concern keeps its targets in mk/<concern>.mk.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BENTOML := $(VENV)/bin/bentoml
PORT ?= 3000
# The model store is BentoML's own (~/bentoml, or $BENTOML_HOME when set in the environment or on
# the command line), so `make train` registers the model that plain `bentoml serve` and
# `bentoml models list` see.
INSTALLED := $(VENV)/.installed-$(shell cksum < requirements.lock | cut -d' ' -f1)
# Debian packages that tests and tools need; each mk/*.mk adds its own. chromium: the docs page's test.
APT_PACKAGES := hey chromium

.PHONY: help install sysdeps lock train model serve test test-fast
help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 20

$(INSTALLED): requirements.lock
	@echo "==> creating $(VENV) and installing pinned dependencies (requirements.lock)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install -q uv==0.13.9
	@# Bytecode now: with PYTHONDONTWRITEBYTECODE set (as on CI boxes) nothing is ever cached, and each
	@# process (every server worker, every CLI run) compiles bentoml, pydantic and xgboost again.
	@$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -r requirements.lock
	@rm -f $(VENV)/.installed-* && touch $@

install: $(INSTALLED)  ## create .venv with the pinned dependencies

lock:  ## re-pin requirements.lock and requirements-serve.lock (the image's) from the .in files
	$(VENV)/bin/uv pip compile -q --python-version 3.11 requirements.in -o requirements.lock
	$(VENV)/bin/uv pip compile -q --python-version 3.11 requirements-serve.in -c requirements.lock -o requirements-serve.lock

sysdeps:  ## install the Debian packages the tests use (only the missing ones)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> apt-get install $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

train: install  ## train the default model (or DATA=file.csv LABEL=column [TASK=auto]; DATA=<capture URI> LABELS=labels.csv; more in TRAIN_ARGS) and register it
	$(PY) train_export.py $(if $(DATA),--data '$(DATA)' $(if $(LABELS),--labels '$(LABELS)',--label '$(LABEL)') --task $(or $(TASK),auto)) $(TRAIN_ARGS)

model: install  ## train the default model only if the store has none
	@$(BENTOML) models get xgb_classifier:latest >/dev/null 2>&1 || $(PY) train_export.py

serve: model  ## serve on http://localhost:$(PORT)
	$(BENTOML) serve service:XGBoostService --port $(PORT)

test: install sysdeps  ## run every test
	$(PY) -m pytest

test-fast: install  ## the in-process tiers: units and the service's ASGI app, no server
	$(PY) -m pytest -m "fast or app" -n 0

-include mk/*.mk
