"""The same table import from any SQLAlchemy URL (SQLite file, PostgreSQL...), with the same text-column detection.

Tables are reflected and queried with `select()`, so SQLAlchemy quotes every identifier; no SQL is built from
strings. Messages show the URL with its password hidden.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import MetaData, Table, create_engine, inspect, select
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, NoSuchTableError, SQLAlchemyError

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


def plan_sql_import(url: str, tables: list[str] | None = None, sample_rows: int = 200) -> list[TablePlan]:
    """Check the requested tables against the database, sample each one and detect its text columns."""
    parsed = _parse(url)
    shown = _shown(parsed)
    engine = _engine(parsed)
    try:
        with _sql_errors(f"reading {shown}"):
            inspector = inspect(engine)
            available = inspector.get_table_names() + inspector.get_view_names()
            requested = list(dict.fromkeys(tables)) if tables else sorted(available)
            unknown = [name for name in requested if name not in available]
            if unknown:
                raise TableImportError(
                    f"{shown} has no table {', '.join(map(repr, unknown))} (tables: {', '.join(sorted(available)) or 'none'})"
                )
            if not requested:
                raise TableImportError(f"{shown} has no tables")
            plans = []
            with engine.connect() as connection:
                for name in requested:
                    table = Table(name, MetaData(), autoload_with=connection)
                    columns = [TableColumn(column.name, column.type.__visit_name__.upper()) for column in table.columns]
                    sample = [dict(row._mapping) for row in connection.execute(select(table).limit(sample_rows))]
                    plans.append(make_plan(name, columns, [column.name for column in table.primary_key.columns], sample))
            return plans
    finally:
        engine.dispose()


def run_sql_import(
    kb, chunker, url: str, plans: list[TablePlan], row_limit: int, on_progress: Progress | None = None
) -> list[TableOutcome]:
    """Import the planned tables, one document per row citing `sql:<database>.<table>:<key>`."""
    parsed = _parse(url)
    shown = _shown(parsed)
    database = slug(Path(parsed.database).stem if parsed.get_backend_name() == "sqlite" else parsed.database or parsed.host or "")
    engine = _engine(parsed)

    def read_rows(plan: TablePlan, limit: int) -> list[dict]:
        with _sql_errors(f"reading {plan.table} from {shown}"), engine.connect() as connection:
            table = Table(plan.table, MetaData(), autoload_with=connection)
            missing = [name for name in columns_to_read(plan) if name not in table.c]
            if missing:
                raise TableImportError(f"{plan.table} no longer has column {', '.join(missing)}")
            query = select(*(table.c[name] for name in columns_to_read(plan))).limit(limit)
            if plan.key_column:
                query = query.order_by(table.c[plan.key_column])
            return [dict(row._mapping) for row in connection.execute(query)]

    try:
        return import_tables(kb, chunker, plans, read_rows, lambda plan: f"sql:{database}.{slug(plan.table)}", row_limit, on_progress)
    finally:
        engine.dispose()


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise TableImportError(
            "not a database URL (expected e.g. sqlite:///path/to/file.db or postgresql://user@host/database)"
        ) from None


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _engine(url: URL) -> Engine:
    """An engine for the URL; a SQLite path must be an existing file, since connecting would create an empty one."""
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
        if not Path(database).is_file():
            raise TableImportError(f"no SQLite database file at {database}")
    try:
        return create_engine(url)
    except NoSuchModuleError:
        raise TableImportError(f"{_shown(url)}: SQLAlchemy has no dialect '{url.drivername}'") from None
    except ImportError as error:
        raise TableImportError(f"{_shown(url)}: the database driver is not installed ({error})") from None
    except (ArgumentError, TypeError, ValueError) as error:
        raise TableImportError(f"{_shown(url)}: {error}") from None


@contextmanager
def _sql_errors(action: str) -> Iterator[None]:
    """Database errors as one line naming the action, without the SQL or SQLAlchemy's background links."""
    try:
        yield
    except NoSuchTableError as error:
        raise TableImportError(f"{action}: no table {error}") from None
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        raise TableImportError(f"{action}: {reason}") from None
