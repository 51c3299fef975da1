"""The committed migrations match the models and form one line."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db.migrations.loader import MigrationLoader


@pytest.mark.django_db
def test_models_have_no_missing_migrations() -> None:
    out = StringIO()
    call_command("makemigrations", "payments", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_payments_migrations_are_linear() -> None:
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    assert len(graph.leaf_nodes("payments")) == 1
