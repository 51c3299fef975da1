# The two commands: `make run` (development server on :8000) and `make test` (the whole suite).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-test migrate clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The development layer unless the caller picked another one.
run migrate: export DJANGO_ENV := $(or $(DJANGO_ENV),development)

migrate: install
	$(BIN)/python manage.py migrate --noinput

run: migrate
	exec $(BIN)/gunicorn -c config/gunicorn.py

test: install-test
	$(BIN)/pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis db.sqlite3

# Benchmarks, not part of `make test` (ARGS="--help" lists their options): bench/run.py needs
# wrk, bench/recycling.py only Python.
.PHONY: bench bench-recycling
bench: install-test
	$(BIN)/python -m bench.run $(ARGS)

bench-recycling: install-test
	$(BIN)/python -m bench.recycling $(ARGS)
