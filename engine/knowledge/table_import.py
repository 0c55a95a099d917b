"""Where a table import reads from, and its two steps (detect, then import), for the page and the CLI alike."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from sqlalchemy.exc import SQLAlchemyError

from engine.access.roles import require_admin
from engine.core.workers import Progress
from engine.knowledge.sql_import import plan_sql_import, run_sql_import
from engine.knowledge.table_rows import TableImportError, TableOutcome, TablePlan

# What a table import reports to the user instead of crashing: bad input and TableImportError (both ValueError),
# and, as a safety net behind the importers' own wrapping, network (OSError, which DatabricksError is) and
# database errors.
IMPORT_FAILURES: tuple[type[Exception], ...] = (ValueError, OSError, SQLAlchemyError)


@dataclass(frozen=True)
class TableSource:
    """Where a table import reads from; kept in session state between detection and import."""
    kind: Literal["unity_catalog", "sql"]
    location: str  # catalog.schema, or a SQLAlchemy URL
    tables: tuple[str, ...] | None
    warehouse_id: str | None = None


def table_source(kind: Literal["unity_catalog", "sql"], location: str, tables: str, warehouse_id: str = "") -> TableSource:
    """Build a TableSource from the form's text, refusing what cannot work before anything is contacted."""
    location = location.strip()
    names = tuple(name for name in re.split(r"[,\s]+", tables) if name)
    if kind == "unity_catalog":
        if not re.fullmatch(r"[^.\s]+\.[^.\s]+", location):
            raise TableImportError(f"'{location}' is not catalog.schema")
        if not warehouse_id.strip():
            raise TableImportError("enter a SQL warehouse id (or set DEPLOYWISE_DATABRICKS_WAREHOUSE_ID)")
    elif not location:
        raise TableImportError("enter a SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db or sqlite:////path/file.db")
    return TableSource(kind, location, names or None, warehouse_id.strip() or None)


def plan_tables(settings, source: TableSource) -> list[TablePlan]:
    """Detect each table's columns and likely text columns; reads a small sample, stores nothing."""
    require_admin("importing tables")
    tables = list(source.tables) if source.tables else None
    if source.kind == "unity_catalog":
        from engine.knowledge.unity_catalog import plan_uc_import, workspace_client  # databricks-sdk: 1 s to import

        return plan_uc_import(workspace_client(settings), source.location, tables, source.warehouse_id)

    return plan_sql_import(source.location, tables)


def choose_text_columns(plans: list[TablePlan], choices: dict[str, list[str]]) -> list[TablePlan]:
    """The plans with the admin's text columns, keyed by full or short table name.

    A table left without text columns (a table of codes, say) is skipped by the import, not refused.
    """
    unused = set(choices)
    chosen = []
    for plan in plans:
        short = plan.table.rsplit(".", 1)[-1]
        key = plan.table if plan.table in choices else short if short in choices else None
        unused.discard(key)
        columns = choices[key] if key is not None else plan.text_columns
        chosen.append(replace(plan, text_columns=list(columns)))
    if unused:
        raise TableImportError(f"text columns given for tables that are not imported: {', '.join(sorted(unused))}")
    return chosen


def run_table_import(
    settings, kb, chunker, source: TableSource, plans: list[TablePlan], on_progress: Progress | None = None, row_limit: int | None = None
) -> list[TableOutcome]:
    """Read the planned tables' rows (up to the configured limit) into the knowledge base."""
    require_admin("importing tables")
    limit = row_limit or settings.import_row_limit
    if source.kind == "unity_catalog":
        from engine.knowledge.unity_catalog import run_uc_import, workspace_client  # databricks-sdk: 1 s to import

        client = workspace_client(settings)
        return run_uc_import(kb, chunker, client, plans, source.warehouse_id, limit, on_progress=on_progress)

    return run_sql_import(kb, chunker, source.location, plans, limit, on_progress=on_progress)
