# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   - set up .venv and run the main demo
#   make test   - set up .venv and run the whole test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU build of torch; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	# peers the NIR tests compare with; without deps: norse pins torchvision (another torch),
	# sinabs pins nir<=1.0.4 and samna (hardware); their real deps (numpy, torch, nir, nirtorch, pbr) are above
	$(BIN)/python -m pip install -q --no-deps "norse>=1.1" "sinabs>=3.1"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/reflexarc run configs/dvs_gesture.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/run_all.py --quick   # quick runs write *_quick.json; --full replaces the figures

clean:
	rm -rf $(VENV) *.egg-info
