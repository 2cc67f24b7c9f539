# `make repro`:   set up everything and run the pipeline (dvc repro) on the default profile; it
#                 ends with one line: runs replayed from the run cache, runs trained.
# `make retrain`: every run trained again into a fresh run cache (hours), then the pipeline.
# `make test`:    set up everything and run the test suite (as root, setup also installs
#                 Debian's slurmctld, slurmd and munge: tests/test_slurm.py starts a one-node
#                 SLURM cluster on loopback).
# `make book`:    build the book's HTML (book/_build/html), warnings as errors: what CI publishes
#                 and what the tests build (on a copy: `make -o setup book BOOK_DIR=<copy>`,
#                 VENV=<their environment>).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Touched when a repro starts: run-cache entries newer than it were trained by this repro.
REPRO_START := $(VENV)/.repro-start
# Where `make retrain` moves the run cache it replaces (kept, not deleted: it may hold runs that
# are not committed yet).
OLD_RUNS := results/runs.before-retrain
BOOK_DIR ?= book

.PHONY: setup repro retrain verify test book bench clean-book

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  need=""; \
	  [ -d /usr/share/datasets/fashion-mnist ] || need="$$need dataset-fashion-mnist"; \
	  command -v chromium >/dev/null || need="$$need chromium"; \
	  slurm=""; \
	  for f in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch /usr/sbin/munged; do \
	    [ -x $$f ] || slurm="slurmctld slurmd slurm-client munge"; \
	  done; \
	  if [ -n "$$need$$slurm" ]; then apt-get update -q && \
	    { [ -z "$$need" ] || apt-get install -y -q $$need; } && \
	    { [ -z "$$slurm" ] || apt-get install -y -q --no-install-recommends $$slurm; }; fi; \
	fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# DVC skips an up-to-date book stage, but a fresh clone has no HTML yet: build it then.
repro: setup
	@touch $(REPRO_START)
	. $(VENV)/bin/activate && dvc repro
	@test -f book/_build/html/index.html || $(MAKE) --no-print-directory book
	@$(PY) -m samkit.pipeline.results $(REPRO_START)

retrain: setup
	@if [ -e $(OLD_RUNS) ]; then echo "error: $(OLD_RUNS) exists (the cache an earlier retrain replaced): move it away first" >&2; exit 1; fi
	@touch $(REPRO_START)
	if [ -d results/runs ]; then mv results/runs $(OLD_RUNS); fi
	. $(VENV)/bin/activate && python -m samkit sweep && dvc repro -f
	@$(PY) -m samkit.pipeline.results $(REPRO_START)

# The retrain check on this machine: each study's lowest seed retrained into
# results/retrain/<this CPU and ISA>/, then every verdict recomputed with those runs in place of
# the committed ones; a verdict that changes is marked fragile on its page and the front page.
VERIFY_SET = $$($(PY) -c 'from samkit.provenance import cpu_model, cpu_isa; import re; print(re.sub(r"[^a-z0-9]+", "-", (cpu_model() + " " + cpu_isa()).lower()).strip("-"))')

verify: setup
	. $(VENV)/bin/activate && python -m samkit sweep --lowest-seed --cache results/retrain/$(VERIFY_SET) && dvc repro
	@echo "retrain check: see each claim's robustness on its page and the fragile list on the front page"

test: setup
	. $(VENV)/bin/activate && python -m pytest -q

book: setup
	. $(VENV)/bin/activate && jupyter-book build $(BOOK_DIR)/ -W -n --keep-going

bench: setup
	. $(VENV)/bin/activate && python benchmarks/step_time.py
