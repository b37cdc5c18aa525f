# The two commands this project lives by:  `make demo`  and  `make test`.
# Both create .venv/ (the package installed editable, with every extra) on a fresh machine first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A CPU build of torch: on this project's machines pip takes it from local disk. Override to taste.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[all]"
	touch $@

demo: setup
	$(VENV)/bin/hymba demo

test: setup
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) .pytest_cache
