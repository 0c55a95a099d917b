"""Unity Catalog import (seed 000): every table of `catalog.schema`, rows read on a SQL warehouse.

Table metadata comes from `tables.list` / `tables.get`; rows come from the statement execution API, which
answers HTTP 200 even for a failed statement (so the state is checked), sends every value as a string (cast
here from the result manifest) and splits large results into chunks. Statement parameters bind values only,
so table names are checked against the listing and backtick-quoted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import DatabricksError, PermissionDenied, Unauthenticated
from databricks.sdk.service.sql import Disposition, ExecuteStatementRequestOnWaitTimeout, Format, StatementState

from engine.core.workers import Progress
from engine.knowledge.sources import slug
from engine.knowledge.table_rows import (
    TableColumn,
    TableImportError,
    TableOutcome,
    TablePlan,
    columns_to_read,
    import_tables,
    make_plan,
)

NAME = r"[A-Za-z0-9_\-]+"
STATEMENT_TIMEOUT_S = 600.0  # a stopped classic warehouse can take minutes to start
POLL_MAX_S = 2.0
_CASTS = {
    "BYTE": int, "SHORT": int, "INT": int, "LONG": int,
    "FLOAT": float, "DOUBLE": float, "DECIMAL": Decimal,
    "BOOLEAN": lambda value: value.lower() == "true",
}
_WAITING = (StatementState.PENDING, StatementState.RUNNING)


def workspace_client(settings=None) -> WorkspaceClient:
    """A client authenticated the SDK's own way (DATABRICKS_HOST/DATABRICKS_TOKEN, a ~/.databrickscfg profile, OAuth...).

    `settings` is accepted so callers pass what they have; no credential lives in deploywise's settings.
    """
    try:
        return WorkspaceClient()
    except ValueError as error:
        raise TableImportError(
            f"Databricks is not configured ({str(error).splitlines()[0]}): set DATABRICKS_HOST and DATABRICKS_TOKEN, "
            "or DATABRICKS_CONFIG_PROFILE for a profile in ~/.databrickscfg"
        ) from None


def quote(identifier: str) -> str:
    """A Databricks SQL identifier in backticks, embedded backticks doubled."""
    return "`" + identifier.replace("`", "``") + "`"


def parse_schema_ref(schema_ref: str) -> tuple[str, str]:
    match = re.fullmatch(rf"\s*({NAME})\.({NAME})\s*", schema_ref or "")
    if not match:
        raise TableImportError(f"{schema_ref!r} is not CATALOG.SCHEMA (letters, digits, _ and - only), e.g. main.gold")
    return match.group(1), match.group(2)


def plan_uc_import(client, schema_ref: str, tables: list[str] | None, warehouse_id: str, sample_rows: int = 200) -> list[TablePlan]:
    """Check the requested tables against the catalog, sample each one and detect its text columns."""
    catalog, schema = parse_schema_ref(schema_ref)
    _require_warehouse(warehouse_id)
    with _databricks_errors(f"listing the tables of {catalog}.{schema}"):
        listed = {info.name: info for info in client.tables.list(catalog_name=catalog, schema_name=schema)}
    if not listed:
        raise TableImportError(f"{catalog}.{schema} has no tables you can see")
    by_lower = {name.lower(): name for name in listed}
    requested = list(dict.fromkeys(tables)) if tables else sorted(listed)
    unknown = [name for name in requested if name.lower() not in by_lower]
    if unknown:
        raise TableImportError(
            f"{catalog}.{schema} has no table {', '.join(map(repr, unknown))} (tables: {', '.join(sorted(listed))})"
        )
    plans = []
    for name in (by_lower[name.lower()] for name in requested):
        full_name = f"{catalog}.{schema}.{name}"
        columns = [
            TableColumn(column.name, column.type_name.value if column.type_name else (column.type_text or "").upper())
            for column in sorted(listed[name].columns or [], key=lambda column: column.position or 0)
        ]
        with _databricks_errors(f"reading the constraints of {full_name}"):
            constraints = client.tables.get(full_name).table_constraints or []  # tables.list leaves them out
        primary_key = next((c.primary_key_constraint.child_columns for c in constraints if c.primary_key_constraint), [])
        sample = query_rows(client, warehouse_id, f"SELECT * FROM {_quoted_table(full_name)} LIMIT {int(sample_rows)}", full_name)
        plans.append(make_plan(full_name, columns, primary_key, sample))
    return plans


def run_uc_import(
    kb, chunker, client, plans: list[TablePlan], warehouse_id: str, row_limit: int, on_progress: Progress | None = None
) -> list[TableOutcome]:
    """Import the planned tables, one document per row citing `uc:<catalog>.<schema>.<table>:<key>`."""
    _require_warehouse(warehouse_id)
    for plan in plans:
        _quoted_table(plan.table)  # a malformed plan fails before anything is stored

    def read_rows(plan: TablePlan, limit: int) -> list[dict]:
        columns = ", ".join(quote(name) for name in columns_to_read(plan))
        order = f" ORDER BY {quote(plan.key_column)}" if plan.key_column else ""
        return query_rows(client, warehouse_id, f"SELECT {columns} FROM {_quoted_table(plan.table)}{order} LIMIT {int(limit)}", plan.table)

    def id_prefix(plan: TablePlan) -> str:
        return "uc:" + ".".join(slug(part) for part in plan.table.split("."))

    return import_tables(kb, chunker, plans, read_rows, id_prefix, row_limit, on_progress)


def query_rows(client, warehouse_id: str, statement: str, table: str, timeout_s: float = STATEMENT_TIMEOUT_S) -> list[dict]:
    """Run one SELECT on the warehouse and return its rows as dicts of typed values, following every result chunk."""
    api = client.statement_execution
    with _databricks_errors(f"reading {table}"):
        response = api.execute_statement(
            statement=statement,
            warehouse_id=warehouse_id,
            wait_timeout="30s",
            on_wait_timeout=ExecuteStatementRequestOnWaitTimeout.CONTINUE,
            disposition=Disposition.INLINE,
            format=Format.JSON_ARRAY,
        )
        deadline, delay = time.monotonic() + timeout_s, 0.1
        while response.status and response.status.state in _WAITING:
            if time.monotonic() > deadline:
                api.cancel_execution(response.statement_id)
                raise TableImportError(
                    f"reading {table}: the statement did not finish within {timeout_s:.0f} s (is the warehouse running?)")
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX_S)
            response = api.get_statement(response.statement_id)
        state = response.status.state if response.status else None
        if state != StatementState.SUCCEEDED:
            error = response.status.error if response.status else None
            reason = error.message if error and error.message else "no reason given"
            raise TableImportError(f"reading {table}: the statement {state.value if state else 'ended'}: {reason}")
        columns = response.manifest.schema.columns or []
        result = response.result
        data = list(result.data_array or []) if result else []
        next_chunk = result.next_chunk_index if result else None
        while next_chunk is not None:
            chunk = api.get_statement_result_chunk_n(response.statement_id, next_chunk)
            data.extend(chunk.data_array or [])
            next_chunk = chunk.next_chunk_index
    casts = [_CASTS.get(column.type_name.value if column.type_name else "", str) for column in columns]
    names = [column.name for column in columns]
    return [
        {name: None if value is None else cast(value) for name, cast, value in zip(names, casts, values, strict=True)}
        for values in data
    ]


def _quoted_table(full_name: str) -> str:
    parts = full_name.split(".")
    if len(parts) != 3 or not all(re.fullmatch(NAME, part) for part in parts[:2]) or not parts[2]:
        raise TableImportError(f"{full_name!r} is not a Unity Catalog table name CATALOG.SCHEMA.TABLE")
    return ".".join(quote(part) for part in parts)


def _require_warehouse(warehouse_id: str | None) -> None:
    if not (warehouse_id or "").strip():
        raise TableImportError("no SQL warehouse id: set DEPLOYWISE_DATABRICKS_WAREHOUSE_ID (or pass --warehouse)")


@contextmanager
def _databricks_errors(action: str) -> Iterator[None]:
    """Databricks API and network errors as one-line TableImportErrors saying what was being done."""
    try:
        yield
    except (Unauthenticated, PermissionDenied) as error:
        raise TableImportError(
            f"{action}: Databricks refused access ({error}); check DATABRICKS_HOST and DATABRICKS_TOKEN "
            "(or the profile) and your privileges on the tables and the warehouse"
        ) from None
    except DatabricksError as error:
        raise TableImportError(f"{action}: {error}") from None
    except OSError as error:  # connection refused, timeouts after the SDK's own retries
        raise TableImportError(f"{action}: cannot reach Databricks ({error})") from None
