# `make repro`: set up everything and run the pipeline (dvc repro) on the default profile.
# `make test`:  set up everything and run the test suite.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: setup repro test book bench clean-book

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  need=""; \
	  [ -d /usr/share/datasets/fashion-mnist ] || need="$$need dataset-fashion-mnist"; \
	  command -v chromium >/dev/null || need="$$need chromium"; \
	  if [ -n "$$need" ]; then apt-get update -q && apt-get install -y -q $$need; fi; \
	fi
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

repro: setup
	. .venv/bin/activate && dvc repro

test: setup
	. .venv/bin/activate && python -m pytest -q

book: setup
	. .venv/bin/activate && jupyter-book build book/ -W -n --keep-going

bench: setup
	. .venv/bin/activate && python benchmarks/step_time.py
