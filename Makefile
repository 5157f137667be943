# Two entry points (README): `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test bench clean

$(BIN)/searchtune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel of 2.13.0 is what this project is tested with,
	# and any looser spec would pull the CUDA build (GBs) on a CPU machine.
	$(BIN)/pip install --quiet torch==2.13.0
	# The same pinned lock the CPU image installs (images/requirements-cpu.lock), then the project.
	$(BIN)/pip install --quiet --no-deps -r images/requirements-cpu.lock
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

setup: $(BIN)/searchtune

# Exit 3 is a finished run whose candidate the gate refused: an answer, not a failure.
run: setup
	HF_HUB_OFFLINE=1 $(BIN)/searchtune run; code=$$?; [ $$code -eq 0 ] || [ $$code -eq 3 ]

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .searchtune
