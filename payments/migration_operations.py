"""Migration operations of our own."""

from __future__ import annotations

from typing import Any

from django.db import migrations


class AddIndexConcurrently(migrations.AddIndex):
    """AddIndex that on PostgreSQL builds the index without blocking writes (CREATE INDEX
    CONCURRENTLY: the migration must be non-atomic); elsewhere, a plain AddIndex. Django's own
    (django.contrib.postgres.operations) refuses other databases."""

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        if not _concurrently(schema_editor, self, model):
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        schema_editor.add_index(model, self.index, concurrently=True)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        if not _concurrently(schema_editor, self, model):
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        schema_editor.remove_index(model, self.index, concurrently=True)


def _concurrently(schema_editor: Any, operation: migrations.AddIndex, model: Any) -> bool:
    connection = schema_editor.connection
    return connection.vendor == "postgresql" and operation.allow_migrate_model(connection.alias, model)
