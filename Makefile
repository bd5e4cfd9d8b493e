# Everything a fresh machine needs: `make demo` runs the main job, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup demo test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all]"
	touch $@

demo: setup
	$(PY) eval_tasks/demo.py --out outputs/demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) outputs .pytest_cache
