"""Keep a DataTable in step with rows that grow and change (a followed run) without rebuilding it."""

from __future__ import annotations

from typing import Iterable

from textual.widgets import DataTable


def add_columns(table: DataTable, names: Iterable[str]) -> None:
    for name in names:
        table.add_column(name, key=name)


def sync_rows(table: DataTable, rows: Iterable[tuple[str, tuple[str, ...]]]) -> int:
    """Add new rows and update changed cells in place (the cursor stays put); returns rows added."""
    columns = [str(col.key.value) for col in table.ordered_columns]
    added = 0
    for key, cells in rows:
        if key in table.rows:
            current = table.get_row(key)
            for column, old, new in zip(columns, current, cells):
                if old != new:
                    table.update_cell(key, column, new, update_width=True)
        else:
            table.add_row(*cells, key=key)
            added += 1
    return added
