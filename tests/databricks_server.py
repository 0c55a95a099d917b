"""A local stand-in for the few Databricks REST endpoints the Unity Catalog import uses, so tests run the real SDK.

Tables live in an in-memory SQLite database, so SELECT statements really run. The server can require a
bearer token, keep a statement PENDING for some polls, split results into chunks and fail chosen statements.
`GOLD_TABLES` are realistic tables shared with the SQLAlchemy import tests (`write_sqlite`).
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

SQLITE_TYPES = {"STRING": "TEXT", "LONG": "BIGINT", "INT": "INTEGER", "DOUBLE": "REAL", "DATE": "DATE", "BOOLEAN": "BOOLEAN"}


@dataclass(frozen=True)
class FakeTable:
    name: str
    columns: list[tuple[str, str]]  # (name, Unity Catalog type name)
    rows: list[tuple]
    primary_key: list[str] = field(default_factory=list)


GOLD_TABLES = [
    FakeTable(
        "eval_notes",
        [("note_id", "LONG"), ("model_name", "STRING"), ("reviewer_email", "STRING"), ("accuracy", "DOUBLE"), ("note", "STRING")],
        [
            (1, "rare_earth_rf_v3", "ana@example.org", 0.942,
             "The random forest keeps 94 percent accuracy on lithium pegmatites and answers within 12 ms, "
             "well inside the field latency budget."),
            (2, "rare_earth_nn_v1", "ben@example.org", 0.951,
             "The neural network is slightly more accurate but its 340 ms inference latency breaks the real-time requirement "
             "for field analysis."),
            (3, "neutron_flux_xgb_v2", "ana@example.org", 0.887,
             "Gradient boosting underestimates neutron flux near the reactor core edge; "
             "calibrate on the new detector data before any deployment."),
        ],
        primary_key=["note_id"],
    ),
    FakeTable(
        "deployment_reviews",
        [("review_id", "STRING"), ("model_id", "STRING"), ("decision", "STRING"), ("rationale", "STRING"), ("reviewed_on", "DATE")],
        [
            ("REV-2024-001", "MDL-7731", "approved",
             "Approved for production because drift stayed below the agreed threshold for six consecutive weeks of shadow traffic.",
             "2024-03-02"),
            ("REV-2024-002", "MDL-7731", "rejected",
             "Rejected: the recall on minority deposit types fell under the acceptance criterion of 0.85 after the last retraining.",
             "2024-04-11"),
            ("REV-2024-003", "MDL-8120", "approved",
             "Approved with a rollback plan, since the latency regression only affects batch scoring and never the interactive path.",
             "2024-05-19"),
        ],
    ),
    FakeTable(
        "error_codes",
        [("code", "STRING"), ("severity", "STRING"), ("label", "STRING")],
        [("E1001", "HIGH", "Scoring timeout"), ("E1002", "LOW", "Stale features"), ("W2001", "MEDIUM", "Drift warning")],
    ),
]


def create_tables(connection, tables: list[FakeTable]) -> None:
    for table in tables:
        columns = [f"{_quoted(name)} {SQLITE_TYPES[type_name]}" for name, type_name in table.columns]
        if table.primary_key:
            columns.append(f"PRIMARY KEY ({', '.join(map(_quoted, table.primary_key))})")
        connection.execute(f"CREATE TABLE {_quoted(table.name)} ({', '.join(columns)})")
        connection.executemany(f"INSERT INTO {_quoted(table.name)} VALUES ({', '.join('?' * len(table.columns))})", table.rows)
    connection.commit()


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def write_sqlite(path, tables: list[FakeTable] = GOLD_TABLES) -> None:
    connection = sqlite3.connect(path)
    try:
        create_tables(connection, tables)
    finally:
        connection.close()


class FakeDatabricks:
    """One workspace with one schema (`catalog.schema`) and one SQL warehouse."""

    def __init__(self, tables: list[FakeTable] = GOLD_TABLES, catalog: str = "main", schema: str = "gold",
                 warehouse_id: str = "wh-1", token: str = "dapi-test-token"):
        self.tables = {table.name: table for table in tables}
        self.catalog, self.schema, self.warehouse_id, self.token = catalog, schema, warehouse_id, token
        self.pending_polls = 0  # a statement starts PENDING, then answers this many polls with RUNNING
        self.chunk_rows: int | None = None  # rows per result chunk; None: one chunk
        self.failures: dict[str, str] = {}  # statement substring -> error message of a FAILED statement
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.statements: list[str] = []  # SQL text of every executed statement
        self._database = sqlite3.connect(":memory:", check_same_thread=False)
        create_tables(self._database, tables)
        self._results: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.host = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> FakeDatabricks:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._database.close()

    def executed(self, kind: str) -> int:
        """How many requests of a kind ('execute', 'poll', 'chunk', 'list', 'get') were made."""
        patterns = {
            "execute": r"POST /api/2\.0/sql/statements$",
            "poll": r"GET /api/2\.0/sql/statements/[^/]+$",
            "chunk": r"GET /api/2\.0/sql/statements/[^/]+/result/chunks/\d+$",
            "list": r"GET /api/2\.1/unity-catalog/tables$",
            "get": r"GET /api/2\.1/unity-catalog/tables/[^/]+$",
        }
        return sum(bool(re.match(patterns[kind], f"{method} {path}")) for method, path in self.requests)

    # --- endpoint logic -------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, body: dict, authorization: str | None) -> tuple[int, dict]:
        with self._lock:
            self.requests.append((method, path))
            if path == "/.well-known/databricks-config":
                return 200, {"oidc_endpoint": f"{self.host}/oidc"}
            if authorization != f"Bearer {self.token}":
                return 403, {"error_code": "403", "message": "Invalid access token."}
            if method == "GET" and path == "/api/2.1/unity-catalog/tables":
                return self._list_tables(query)
            if method == "GET" and path.startswith("/api/2.1/unity-catalog/tables/"):
                return self._get_table(unquote(path.rsplit("/", 1)[1]))
            if method == "POST" and path == "/api/2.0/sql/statements":
                return self._execute(body)
            match = re.fullmatch(r"/api/2\.0/sql/statements/([^/]+)(?:/result/chunks/(\d+)|/(cancel))?", path)
            if match and match.group(1) in self._results:
                record = self._results[match.group(1)]
                if match.group(2) is not None:
                    return 200, self._chunk(record, int(match.group(2)))
                if match.group(3):
                    record["state"] = "CANCELED"
                    return 200, {}
                return 200, self._poll(record)
            return 404, {"error_code": "NOT_FOUND", "message": f"no route {method} {path}"}

    def _table_info(self, table: FakeTable) -> dict:
        full_name = f"{self.catalog}.{self.schema}.{table.name}"
        return {
            "name": table.name, "catalog_name": self.catalog, "schema_name": self.schema, "full_name": full_name,
            "table_type": "MANAGED",
            "columns": [
                {"name": name, "type_name": type_name, "type_text": type_name.lower(), "position": position, "nullable": True}
                for position, (name, type_name) in enumerate(table.columns)
            ],
        }

    def _list_tables(self, query: dict) -> tuple[int, dict]:
        if query.get("catalog_name") != self.catalog or query.get("schema_name") != self.schema:
            return 404, {
                "error_code": "SCHEMA_DOES_NOT_EXIST",
                "message": f"Schema '{query.get('catalog_name')}.{query.get('schema_name')}' does not exist.",
            }
        return 200, {"tables": [self._table_info(table) for table in self.tables.values()]}  # no constraints, as in UC

    def _get_table(self, full_name: str) -> tuple[int, dict]:
        table = next((t for t in self.tables.values() if f"{self.catalog}.{self.schema}.{t.name}" == full_name), None)
        if table is None:
            return 404, {"error_code": "TABLE_DOES_NOT_EXIST", "message": f"Table '{full_name}' does not exist."}
        info = self._table_info(table)
        if table.primary_key:
            info["table_constraints"] = [
                {"primary_key_constraint": {"name": f"{table.name}_pk", "child_columns": table.primary_key}}
            ]
        return 200, info

    def _execute(self, body: dict) -> tuple[int, dict]:
        if body.get("warehouse_id") != self.warehouse_id:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"SQL warehouse {body.get('warehouse_id')} does not exist."}
        if body.get("disposition") != "INLINE" or body.get("format") != "JSON_ARRAY":
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "this fake serves INLINE JSON_ARRAY only"}
        statement = body["statement"]
        self.statements.append(statement)
        record = {"id": f"stmt-{next(self._ids)}", "polls_left": self.pending_polls, "state": "SUCCEEDED"}
        failure = next((message for needle, message in self.failures.items() if needle in statement), None)
        try:
            # Three-part names exist only in Unity Catalog: run `main`.`gold`.`t` as `t` on SQLite.
            cursor = self._database.execute(statement.replace(f"`{self.catalog}`.`{self.schema}`.", ""))
            names = [column[0] for column in cursor.description]
            rows = [[None if value is None else str(value) for value in row] for row in cursor.fetchall()]
        except sqlite3.Error as error:
            failure = failure or f"[PARSE_SYNTAX_ERROR] {error}"
        if failure:
            record.update(state="FAILED", error={"error_code": "BAD_REQUEST", "message": failure})
        else:
            record.update(names=names, rows=rows)
        self._results[record["id"]] = record
        if record["polls_left"]:
            return 200, {"statement_id": record["id"], "status": {"state": "PENDING"}}
        return 200, self._response(record)

    def _poll(self, record: dict) -> dict:
        if record["polls_left"] and record["state"] == "SUCCEEDED":
            record["polls_left"] -= 1
            return {"statement_id": record["id"], "status": {"state": "RUNNING"}}
        record["polls_left"] = 0
        return self._response(record)

    def _response(self, record: dict) -> dict:
        response = {"statement_id": record["id"], "status": {"state": record["state"]}}
        if record["state"] == "FAILED":
            response["status"]["error"] = record["error"]
        if record["state"] != "SUCCEEDED":
            return response
        types = {name: type_name for table in self.tables.values() for name, type_name in table.columns}
        chunks = self._chunks(record)
        response["manifest"] = {
            "format": "JSON_ARRAY",
            "schema": {
                "column_count": len(record["names"]),
                "columns": [
                    {"name": name, "position": position, "type_name": types.get(name, "STRING"),
                     "type_text": types.get(name, "STRING").lower()}
                    for position, name in enumerate(record["names"])
                ],
            },
            "total_row_count": len(record["rows"]),
            "total_chunk_count": len(chunks),
            "chunks": [{"chunk_index": i, "row_offset": offset, "row_count": len(rows)} for i, (offset, rows) in enumerate(chunks)],
            "truncated": False,
        }
        response["result"] = self._chunk(record, 0)
        return response

    def _chunks(self, record: dict) -> list[tuple[int, list]]:
        size = self.chunk_rows or max(len(record["rows"]), 1)
        return [(offset, record["rows"][offset:offset + size]) for offset in range(0, len(record["rows"]), size)] or [(0, [])]

    def _chunk(self, record: dict, index: int) -> dict:
        chunks = self._chunks(record)
        offset, rows = chunks[index]
        chunk = {"chunk_index": index, "row_offset": offset, "row_count": len(rows)}
        if rows:
            chunk["data_array"] = rows  # Databricks leaves data_array out of an empty result
        if index + 1 < len(chunks):
            chunk["next_chunk_index"] = index + 1
            chunk["next_chunk_internal_link"] = f"/api/2.0/sql/statements/{record['id']}/result/chunks/{index + 1}"
        return chunk

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                status, payload = fake.handle(self.command, url.path.rstrip("/") or "/", query, body, self.headers.get("Authorization"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args):  # keep test output clean
                pass

        return Handler
