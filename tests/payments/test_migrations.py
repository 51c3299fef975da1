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


# From here on, migrations expand only (docs/operations.md, "Rollback"): during a rollout and after a
# rollback the previous release runs on the new schema, so it must be able to ignore what was added.
EXPAND_ONLY_FROM = "0005"
# A migration that removes or changes what a release reads ships a release after the last one that
# read it (contract), and is listed here with that release: "<migration>": "the release it follows".
CONTRACTS: dict[str, str] = {}


def _not_expanding(app_label: str, name: str, loader: MigrationLoader) -> list[str]:
    """The operations of a migration that the previous release could not ignore."""
    from django.db import connection, migrations

    migration = loader.disk_migrations[app_label, name]
    before = loader.project_state((app_label, name), at_end=False)
    after = loader.project_state((app_label, name), at_end=True)
    refused = []
    for operation in migration.operations:
        # New tables and indexes; names and ordering that live in Python only.
        if isinstance(operation, (migrations.CreateModel, migrations.AddIndex, migrations.AlterModelOptions)):
            continue
        if isinstance(operation, migrations.AddField):
            # The previous release inserts rows without the column: NULL, or the database's default.
            # A many-to-many field is a table of its own, which it never reads.
            if operation.field.null or operation.field.has_db_default() or operation.field.many_to_many:
                continue
        elif isinstance(operation, migrations.AlterField):
            old = before.apps.get_model(app_label, operation.model_name)._meta.get_field(operation.name)
            # From the state after the migration: a relation's target resolved to its model.
            new = after.apps.get_model(app_label, operation.model_name)._meta.get_field(operation.name)
            # Django's own test of whether the column changes (not for help text, choices, validators).
            if not connection.SchemaEditorClass(connection, collect_sql=True)._field_should_be_altered(old, new):
                continue
        refused.append(operation.describe())
    return refused


@pytest.mark.django_db
def test_new_migrations_only_add_what_the_previous_release_can_ignore() -> None:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    names = sorted(name for app, name in loader.disk_migrations if app == "payments" and name >= EXPAND_ONLY_FROM)
    assert names, "no migration to check"
    refused = {name: ops for name in names if name not in CONTRACTS and (ops := _not_expanding("payments", name, loader))}
    assert refused == {}, "expand first, contract a release later (docs/operations.md, Rollback)"


@pytest.mark.django_db
def test_a_column_the_previous_release_would_not_fill_is_not_an_expansion() -> None:
    from django.db import migrations, models

    loader = MigrationLoader(None, ignore_no_migrations=True)
    name = sorted(name for app, name in loader.disk_migrations if app == "payments")[-1]
    migration = loader.disk_migrations["payments", name]
    added = migrations.AddField("order", "note", models.CharField(max_length=10, default=""))
    migration.operations = [*migration.operations, added]
    try:
        assert _not_expanding("payments", name, loader) == [added.describe()]
    finally:
        migration.operations.remove(added)
