# slowlearn: `make train` and `make test` do all set-up themselves (.venv, install, data).
PYTHON_BASE ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
INSTALLED   := $(VENV)/.installed
ARGS        ?=
DATA_DIR    ?= data
JOBS        ?= 1
# JOBS>1: a sweep runs that many jobs at once in joblib processes, the cores split between them.
LAUNCHER_ARGS := $(if $(filter-out 1,$(JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS))
BENCH_ARGS  ?=

DATASET     ?= mnist
CKPT        ?=

.PHONY: install data train eval tensorboard test lint clean delete-data-and-logs

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(INSTALLED)

data: $(INSTALLED)  ## prepare DATASET (mnist or fashion_mnist); re-fetches missing or corrupt files
	$(PY) -m slowlearn.data --dir $(DATA_DIR) --dataset $(DATASET)

train: $(INSTALLED)  ## one run, or a sweep with ARGS="-m ..."; any Hydra override goes in ARGS
	$(PY) -m slowlearn.train $(ARGS)

eval: $(INSTALLED)  ## test accuracy of a checkpoint: make eval CKPT=logs/runs/.../checkpoints/last.ckpt
	@test -n "$(CKPT)" || { echo "usage: make eval CKPT=<run folder>/checkpoints/last.ckpt"; exit 2; }
	$(PY) -m slowlearn.evaluate $(CKPT)

.PHONY: bench
bench: $(INSTALLED)  ## epoch times against a plain PyTorch loop and a torchvision DataLoader
	$(PY) scripts/bench.py --out logs/bench $(BENCH_ARGS)

# The report's folder: by default the newest sweep, so that `make report` follows `make sweep`.
RUN ?= $(shell ls -dt logs/multiruns/*/*/ 2>/dev/null | head -n 1)

.PHONY: report sweep
report: $(INSTALLED)  ## summary.csv, report.md and curves.png of RUN (a multirun or run folder)
	@test -n "$(RUN)" || { echo "no sweep under logs/multiruns: run make sweep, or give RUN=<folder>"; exit 2; }
	$(PY) -m slowlearn.report $(RUN)

# The sweep goes into a new folder of its own, so that the report reads this sweep; the report
# is made even if a job failed (Hydra then exits non-zero, and so does make, after the report).
sweep: $(INSTALLED)  ## the ablation (experiment=ablation, a Hydra multirun), then its report
	mkdir -p logs/multiruns/ablation
	dir=$$(mktemp -d logs/multiruns/ablation/$$(date +%Y-%m-%d_%H-%M-%S)-XXXX) && { \
	  $(PY) -m slowlearn.train -m experiment=ablation hydra.sweep.dir=$$dir $(LAUNCHER_ARGS) $(ARGS); \
	  trained=$$?; $(PY) -m slowlearn.report $$dir && exit $$trained; }

tensorboard: $(INSTALLED)
	$(VENV)/bin/tensorboard --logdir logs

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest

delete-data-and-logs:  ## deletes datasets, every run, sweep and checkpoint; asks unless FORCE=1
	@if [ "$(FORCE)" != 1 ]; then \
	  printf 'Delete $(DATA_DIR)/ and logs/ (all runs, sweeps and checkpoints)? [y/N] '; \
	  read answer; [ "$$answer" = y ] || { echo "kept"; exit 1; }; \
	fi
	rm -rf $(DATA_DIR) logs

clean:  ## build and cache files only: never data/ or logs/
	rm -rf build src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
