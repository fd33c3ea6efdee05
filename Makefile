# Every target creates the virtual environment on first use; `make help` lists them.
VENV       ?= .venv
PYTHON     := $(VENV)/bin/python
INSTALLED  := $(VENV)/.installed
CONFIG     ?= configs/default.yaml
ARGS       ?=
PORT       ?= 5000
TRACKING_URI := $(or $(MLFLOW_TRACKING_URI),sqlite:///$(CURDIR)/mlflow.db)

.DEFAULT_GOAL := help
EXPERIMENT ?=
.PHONY: help install run-study show smoke report bench ui server test lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: CONFIG=$(CONFIG) ARGS='--set epochs=2' PORT=$(PORT) MLFLOW_TRACKING_URI=..."

$(INSTALLED): pyproject.toml
	@echo "Setting up $(VENV) (first time only: TensorFlow makes this take a few minutes)..."
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev,ray]'
	@touch $@

install: $(INSTALLED) ## create the virtual environment and install the project

run-study: $(INSTALLED) ## train the study in CONFIG (default configs/default.yaml) into MLflow
	MLFLOW_TRACKING_URI=$(TRACKING_URI) PORT=$(PORT) $(PYTHON) -m study run $(CONFIG) $(ARGS)

show: $(INSTALLED) ## print the grid of arms of CONFIG without training
	$(PYTHON) -m study show $(CONFIG) $(ARGS)

smoke: ## run configs/smoke.yaml (under a minute)
	$(MAKE) run-study CONFIG=configs/smoke.yaml

report: $(INSTALLED) ## render reports/<experiment>/ from the store (EXPERIMENT=name for one)
	MLFLOW_TRACKING_URI=$(TRACKING_URI) $(PYTHON) -m study report $(if $(EXPERIMENT),--experiment $(EXPERIMENT))

bench: $(INSTALLED) ## the harness against Keras fit + MLflow, estimates, split (ARGS=--quick: < 3 min)
	$(PYTHON) -m study.bench $(ARGS)

ui: $(INSTALLED) ## print each study's link, then browse the store on http://127.0.0.1:PORT (VERBOSE=1: access log)
	$(PYTHON) -m study ui --tracking-uri $(TRACKING_URI) --port $(PORT) $(if $(VERBOSE),--verbose)

server: $(INSTALLED) ## a tracking server for workers and users on 127.0.0.1:PORT over the store
	$(VENV)/bin/mlflow server --backend-store-uri $(TRACKING_URI) \
		--artifacts-destination $(CURDIR)/mlartifacts --host 127.0.0.1 --port $(PORT) --workers 4 \
		--app-name study

lint: $(INSTALLED) ## ruff
	$(VENV)/bin/ruff check study tests

# The browser test drives a real Chromium; Debian's package, once (about 480 MB, 45 s).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update && apt-get install -y chromium || \
		{ echo "make test needs $(CHROMIUM): sudo apt-get install -y chromium"; exit 1; }

test: lint $(CHROMIUM) ## lint, then the test suite on two workers (installs chromium once)
	$(PYTHON) -m pytest -n 2 --dist loadgroup --durations=15

clean: ## remove the virtual environment and caches (keeps mlflow.db)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
