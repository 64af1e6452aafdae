# pointtune: `make demo` runs the main job, `make test` the test suite, `make test-fast` its tests not marked
# slow (those that start Ray, run a sweep or train for long). All create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
# CPU wheel by default; GPU users install their CUDA build of torch into $(VENV) first (README).
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
DATA   ?= ../shared/data

.PHONY: setup demo demo-modelnet test test-fast bench clean

$(BIN)/pointtune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,dashboard,data]" -c clusters/constraints.txt
	touch $@

setup: $(BIN)/pointtune

# Main job: a short CEDR sweep on the embedded synthetic dataset (a few minutes on a 2-core CPU).
demo: setup
	$(BIN)/pointtune sweep cedr --space search_spaces/cedr_quick.yaml --trials 6 --epochs 5 --output runs/demo

# The same sweep on real ModelNet40 shapes (airplane, bathtub, bench of the shared sample).
demo-modelnet: setup
	$(BIN)/pointtune sweep cedr --space search_spaces/cedr_quick.yaml --trials 4 --epochs 4 \
	  --dataset modelnet40 --data-root $(DATA)/modelnet40_subset \
	  --set "data.classes=[airplane,bathtub,bench]" --output runs/demo-modelnet

# One test process by default. TEST_WORKERS=2 runs two (pytest-xdist), each taking whole files (a module's
# fixtures run once), with torch's threads waiting passively (tests/conftest.py): 35 min instead of 49 on the
# slower 2-core machine of earlier measurements (one process takes 20 min on a 2-core AMD EPYC) in one clean run,
# but at a load of 4-8 Ray start-ups and nodes time out in others (1-3 failures a run).
TEST_WORKERS ?= 0
test: setup
	$(BIN)/pytest -q -ra $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test-fast: setup
	$(BIN)/pytest -q -ra -m "not slow"

bench: setup
	$(BIN)/python bench/overhead.py --output runs/bench/overhead.json

clean:
	rm -rf runs
