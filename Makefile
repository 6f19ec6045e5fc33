# slowlearn: `make train` and `make test` do all set-up themselves (.venv, install, data).
PYTHON_BASE ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
INSTALLED   := $(VENV)/.installed
ARGS        ?=
DATA_DIR    ?= data
EXPERIMENT  ?= ablation
LAUNCHER    ?= batched
JOBS        ?= 1
# A sweep trains as one vectorised program per group of jobs (LAUNCHER=batched), one job after
# the other (LAUNCHER=basic), or JOBS>1 jobs at once in joblib processes, the cores split.
LAUNCHER_ARGS := $(if $(filter-out 1,$(JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS),hydra/launcher=$(LAUNCHER))
BENCH_ARGS  ?=
PORT        ?= 6006

DATASET     ?= mnist
CKPT        ?=

.PHONY: install data train eval tensorboard test test-slow lint clean delete-data-and-logs

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(INSTALLED)

data: $(INSTALLED)  ## prepare DATASET (mnist or fashion_mnist); re-fetches missing or corrupt files
	$(PY) -m slowlearn.prepare --dir $(DATA_DIR) --dataset $(DATASET)

train: $(INSTALLED)  ## one run, or a sweep with ARGS="-m ..."; any Hydra override goes in ARGS
	$(PY) -m slowlearn.train $(ARGS)

eval: $(INSTALLED)  ## test accuracy of a checkpoint: make eval CKPT=logs/runs/.../checkpoints/last.ckpt
	@test -n "$(CKPT)" || { echo "usage: make eval CKPT=<run folder>/checkpoints/last.ckpt"; exit 2; }
	$(PY) -m slowlearn.evaluate $(CKPT)

.PHONY: bench bench-sweep bench-levers
bench: $(INSTALLED)  ## epoch times against a plain PyTorch loop and a torchvision DataLoader
	$(PY) scripts/bench_epoch.py --out logs/bench $(BENCH_ARGS)

bench-sweep: $(INSTALLED)  ## the 18-run ablation batched against the basic launcher, side by side
	$(PY) scripts/bench_sweep.py --out logs/bench-sweep $(BENCH_ARGS)

bench-levers: $(INSTALLED)  ## the step's levers not kept, each against the step's own way
	$(PY) scripts/bench_levers.py --out logs/bench-levers $(BENCH_ARGS)

# The report's folder: by default the newest sweep, so that `make report` follows `make sweep`.
NEWEST_SWEEP = $(shell ls -dt logs/multiruns/*/*/ 2>/dev/null | head -n 1)

.PHONY: report sweep results
report: $(INSTALLED)  ## the report of RUN (a sweep or run folder; default the newest sweep)
	@test -n "$(or $(RUN),$(NEWEST_SWEEP))" || { echo "no sweep under logs/multiruns: run make sweep, or give RUN=<folder>"; exit 2; }
	$(PY) -m slowlearn.report $(or $(RUN),$(NEWEST_SWEEP))

# The sweep goes into a new folder of its own, so that the report reads this sweep; the report
# is made even if a job failed (Hydra then exits non-zero, and so does make, after the report).
# A diverged job is a result, not a failure: a sweep whose other jobs completed exits 0.
sweep: $(INSTALLED)  ## EXPERIMENT (default ablation) as a Hydra multirun, then its report
	mkdir -p logs/multiruns/$(EXPERIMENT)
	dir=$$(mktemp -d logs/multiruns/$(EXPERIMENT)/$$(date +%Y-%m-%d_%H-%M-%S)-XXXX) && { \
	  $(PY) -m slowlearn.train -m experiment=$(EXPERIMENT) hydra.sweep.dir=$$dir $(LAUNCHER_ARGS) $(ARGS); \
	  trained=$$?; $(PY) -m slowlearn.report $$dir && \
	  echo "inspect: make tensorboard RUN=$$dir" && exit $$trained; }

# docs/results.md and README's summary from the newest sweep of each preset and dataset, every
# report regenerated; exit 2, and neither file touched, while ablation, lr_fair or depth has none.
results: $(INSTALLED)  ## docs/results.md and the README's results block, from the newest sweeps
	$(PY) -m slowlearn.report.results

# TensorBoard on RUN (a sweep or run folder; default all of logs/), and the links of its views:
# one colour per cell (runColorGroup), the seed-aggregated runs alone (runFilter), and the
# custom-scalars tab whose margin charts draw each mean with its min-max band.
tensorboard: $(INSTALLED)  ## TensorBoard on RUN (default logs/); prints the URLs of its views
	@url=http://localhost:$(PORT); cell='runColorGroup=regex:%5E(%5B%5E%2F%5D%2B)'; \
	echo "every run, one colour per cell:      $$url/?$$cell#timeseries"; \
	echo "the seed means alone (make report):  $$url/?$$cell&runFilter=%2Fmean%24#timeseries"; \
	echo "each mean with its min-max band:     $$url/#custom_scalars"; \
	echo "settings and results of every run:   $$url/#hparams"
	$(VENV)/bin/tensorboard --logdir $(or $(RUN),logs) --port $(PORT)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest

test-slow: $(INSTALLED)  ## the slow tests: submitit jobs and script dry runs (CI runs them)
	$(VENV)/bin/pytest -m slow -n 0

delete-data-and-logs:  ## deletes datasets, every run, sweep and checkpoint; asks unless FORCE=1
	@if [ "$(FORCE)" != 1 ]; then \
	  printf 'Delete $(DATA_DIR)/ and logs/ (all runs, sweeps and checkpoints)? [y/N] '; \
	  read answer; [ "$$answer" = y ] || { echo "kept"; exit 1; }; \
	fi
	rm -rf $(DATA_DIR) logs

clean:  ## build and cache files only: never data/ or logs/
	rm -rf build src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
