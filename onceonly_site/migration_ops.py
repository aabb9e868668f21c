"""Migration operations that keep their locks short on a large PostgreSQL table, and fall back to the plain
operation elsewhere (SQLite, the embedded default). A migration using one is ``atomic = False``: PostgreSQL builds
and drops indexes concurrently outside a transaction only (docs/operations.md §"Upgrading")."""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import RemoveIndexConcurrently as _RemoveConcurrently
from django.db import migrations


class RemoveIndexConcurrently(_RemoveConcurrently):
    """``DROP INDEX CONCURRENTLY`` on PostgreSQL (never waits with an exclusive lock behind long readers while
    blocking the writers queued after it), a plain ``RemoveIndex`` elsewhere."""

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.RemoveIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.RemoveIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)
