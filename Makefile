PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv browser demo test bench bench-training lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/featurepipe demo

# Debian's Chromium renders the monitoring report in a test; installed where apt can (as root)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    { apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: no Chromium (apt-get install chromium): the HTML report's browser test is skipped"

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/run.py --snapshot
	$(BIN)/python benchmarks/training_sets.py --quick
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/http_serving.py
	$(BIN)/python benchmarks/stream_speed.py
	$(BIN)/python benchmarks/hopped_windows.py
	$(BIN)/python benchmarks/kinds.py
	$(BIN)/python benchmarks/hopped_windows.py --events 600000 --users 100
	$(BIN)/python benchmarks/redis_cluster.py
	$(BIN)/python benchmarks/materialize_shards.py
	$(BIN)/python benchmarks/materialize_speed.py
	$(BIN)/python -m pytest -q -m slow

bench-training: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/training_sets.py

lint: $(STAMP)
	$(BIN)/ruff check featurepipe tests benchmarks
	$(BIN)/ruff format --check featurepipe
	$(BIN)/mypy featurepipe

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
