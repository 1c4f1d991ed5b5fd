# The two commands of the README. Both create .venv and install what they need first.
#   make demo   full study on the built-in synthetic cohort -> runs/demo/report.html
#   make test   the test suite
#   make lint   ruff, mypy (strict; see pyproject.toml) and the import-layer contracts (lint-imports)
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: demo test lint setup clean

setup:
	@scripts/bootstrap.sh $(VENV) dev

demo: setup
	$(VENV)/bin/cardioclr study --out $(OUT)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .import_linter_cache
