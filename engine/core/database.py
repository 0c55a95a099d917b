"""The knowledge database: one SQLite file (WAL, FTS5, sqlite-vec) with a versioned schema.

The stock `sqlite3` of this Python cannot load extensions, so connections come from `sqlean` (a drop-in
sqlite3 build) with sqlite-vec loaded. Migrations are plain SQL scripts applied in order; `PRAGMA
user_version` records how far a database has come.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlean
import sqlite_vec

EMBEDDING_DIM = 384
BUSY_TIMEOUT_S = 10  # how long a write waits for another connection's transaction before "database is locked"
DatabaseError = sqlean.Error  # what a failed statement raises: a full disk, a lock held past the busy timeout...

MIGRATIONS: list[str] = [
    # 1: documents, chunks, full-text and vector indexes, source registry, unknown source log
    f"""
    CREATE TABLE documents (
        id          INTEGER PRIMARY KEY,
        title       TEXT NOT NULL,
        origin      TEXT NOT NULL UNIQUE,
        sha256      TEXT NOT NULL UNIQUE,
        metadata    TEXT NOT NULL DEFAULT '{{}}',
        ingested_at TEXT NOT NULL
    );
    CREATE TABLE chunks (
        id            INTEGER PRIMARY KEY,
        document_id   INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        chunk_index   INTEGER NOT NULL,
        text          TEXT NOT NULL,
        token_count   INTEGER NOT NULL,
        source_id     TEXT NOT NULL,
        source_domain TEXT NOT NULL GENERATED ALWAYS AS (substr(source_id, 1, instr(source_id, ':') - 1)) VIRTUAL,
        edited        INTEGER NOT NULL DEFAULT 0,
        UNIQUE (document_id, chunk_index)
    );
    CREATE INDEX chunks_by_source ON chunks(source_id);
    CREATE VIRTUAL TABLE chunks_fts USING fts5(
        text, content='chunks', content_rowid='id', tokenize='porter unicode61'
    );
    CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
        DELETE FROM chunk_vectors WHERE chunk_id = old.id;
    END;
    CREATE TRIGGER chunks_fts_update AFTER UPDATE OF text ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE VIRTUAL TABLE chunk_vectors USING vec0(
        chunk_id INTEGER PRIMARY KEY,
        embedding float[{EMBEDDING_DIM}] distance_metric=cosine,
        source_domain TEXT,
        document_id INTEGER
    );
    CREATE TABLE sources (
        source_id    TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        url          TEXT,
        kind         TEXT NOT NULL,
        updated_at   TEXT NOT NULL
    );
    CREATE TABLE unknown_sources (
        source_id   TEXT PRIMARY KEY,
        first_seen  TEXT NOT NULL,
        last_seen   TEXT NOT NULL,
        occurrences INTEGER NOT NULL DEFAULT 1,
        context     TEXT
    );
    """,
    # 2: a counter every chunk write bumps, so in-memory search indexes know when to reload
    """
    CREATE TABLE index_state (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        generation INTEGER NOT NULL
    );
    INSERT INTO index_state(id, generation) VALUES (1, 0);
    CREATE TRIGGER chunks_generation_insert AFTER INSERT ON chunks BEGIN
        UPDATE index_state SET generation = generation + 1;
    END;
    CREATE TRIGGER chunks_generation_delete AFTER DELETE ON chunks BEGIN
        UPDATE index_state SET generation = generation + 1;
    END;
    CREATE TRIGGER chunks_generation_update AFTER UPDATE OF text ON chunks BEGIN
        UPDATE index_state SET generation = generation + 1;
    END;
    """,
    # 3: acceptance criteria and selection policies per use case, answer records and their feedback
    """
    CREATE TABLE acceptance_criteria (
        id         INTEGER PRIMARY KEY,
        use_case   TEXT NOT NULL,
        metric     TEXT NOT NULL,
        comparison TEXT NOT NULL CHECK (comparison IN ('>=', '<=', '>', '<')),
        threshold  REAL NOT NULL,
        hard       INTEGER NOT NULL CHECK (hard IN (0, 1)),
        source_id  TEXT NOT NULL,
        rationale  TEXT NOT NULL DEFAULT '',
        reviewed   INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL,
        UNIQUE (use_case, metric, comparison)
    );
    CREATE TABLE use_case_policies (
        use_case        TEXT PRIMARY KEY,
        priority_metric TEXT NOT NULL,
        tie_breaker     TEXT,
        source_id       TEXT NOT NULL,
        reviewed        INTEGER NOT NULL DEFAULT 0,
        updated_at      TEXT NOT NULL
    );
    CREATE TABLE answers (
        id                INTEGER PRIMARY KEY,
        asked_at          TEXT NOT NULL,
        question          TEXT NOT NULL,
        use_case          TEXT,
        answer            TEXT NOT NULL,
        answer_origin     TEXT NOT NULL CHECK (answer_origin IN ('llm', 'llm-retry', 'deterministic')),
        llm_version       TEXT NOT NULL,
        recommended_model TEXT,
        candidates        TEXT NOT NULL DEFAULT '[]',
        decision          TEXT NOT NULL DEFAULT '{}',
        sources           TEXT NOT NULL DEFAULT '[]',
        verification      TEXT NOT NULL DEFAULT '{}',
        timings           TEXT NOT NULL DEFAULT '{}',
        notices           TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX answers_by_version ON answers(llm_version);
    CREATE TABLE feedback (
        answer_id      INTEGER PRIMARY KEY REFERENCES answers(id) ON DELETE CASCADE,
        rating         INTEGER NOT NULL CHECK (rating IN (0, 1)),
        what_was_wrong TEXT,
        correct_answer TEXT,
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE training_jobs (
        id             TEXT PRIMARY KEY,
        kind           TEXT NOT NULL,
        state          TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelling', 'cancelled')),
        config         TEXT NOT NULL,
        config_hash    TEXT NOT NULL,
        snapshot_id    TEXT NOT NULL,
        start_from     TEXT NOT NULL,
        mlflow_run_id  TEXT NOT NULL,
        ray_address    TEXT NOT NULL,
        log_location   TEXT NOT NULL,
        llm_version    TEXT,
        message        TEXT,
        created_by     TEXT,
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL,
        finished_at    TEXT
    );
    CREATE INDEX training_jobs_by_state ON training_jobs(state);
    """,
    # 5: the admin's review of flagged answers (engine.answering.feedback_review): one row per answer once reviewed
    """
    CREATE TABLE feedback_reviews (
        answer_id   INTEGER PRIMARY KEY REFERENCES answers(id) ON DELETE CASCADE,
        state       TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'rejected')),
        correction  TEXT,
        note        TEXT,
        reviewer    TEXT,
        reviewed_at TEXT NOT NULL,
        CHECK (state != 'accepted' OR length(trim(coalesce(correction, ''))) > 0)
    );
    CREATE INDEX feedback_reviews_by_state ON feedback_reviews(state);
    """,
    # 6: named SFT datasets (training.sft_data): generation run state, drops by reason, and their reviewed pairs
    """
    CREATE TABLE sft_datasets (
        name          TEXT PRIMARY KEY,
        state         TEXT NOT NULL CHECK (state IN ('queued', 'generating', 'ready', 'failed', 'cancelled')),
        config        TEXT NOT NULL DEFAULT '{}',
        drops         TEXT NOT NULL DEFAULT '{}',
        progress      TEXT NOT NULL DEFAULT '{}',
        error         TEXT,
        pid           INTEGER,
        exported_hash TEXT,
        created_by    TEXT,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    );
    CREATE TABLE sft_pairs (
        id                 INTEGER PRIMARY KEY,
        dataset            TEXT NOT NULL REFERENCES sft_datasets(name) ON DELETE CASCADE,
        style              TEXT NOT NULL,
        question           TEXT NOT NULL,
        question_key       TEXT NOT NULL,
        instruction        TEXT NOT NULL,
        output             TEXT NOT NULL,
        edited_instruction TEXT,
        edited_output      TEXT,
        chunk_ids          TEXT NOT NULL DEFAULT '[]',
        source_ids         TEXT NOT NULL DEFAULT '[]',
        generator          TEXT NOT NULL,
        state              TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'accepted', 'rejected')),
        created_at         TEXT NOT NULL,
        reviewed_by        TEXT,
        reviewed_at        TEXT,
        UNIQUE (dataset, question_key)
    );
    CREATE INDEX sft_pairs_by_dataset ON sft_pairs(dataset, state);
    """,
    # 7: rules are read from documents at answer time (engine.rules.rulebook); these tables keep only what an admin decided:
    # reviewed rule sets (with the sentence each rule came from), metric directions, which use case a document governs
    """
    DELETE FROM acceptance_criteria WHERE reviewed = 0;
    DELETE FROM use_case_policies WHERE reviewed = 0;
    CREATE TABLE reviewed_criteria (
        id          INTEGER PRIMARY KEY,
        use_case    TEXT NOT NULL,
        metric      TEXT NOT NULL,
        comparison  TEXT NOT NULL CHECK (comparison IN ('>=', '<=', '>', '<')),
        threshold   REAL NOT NULL,
        hard        INTEGER NOT NULL CHECK (hard IN (0, 1)),
        source_id   TEXT NOT NULL,
        rationale   TEXT NOT NULL DEFAULT '',
        sentence    TEXT NOT NULL DEFAULT '',
        reviewed    INTEGER NOT NULL DEFAULT 1 CHECK (reviewed = 1),
        reviewed_by TEXT,
        updated_at  TEXT NOT NULL,
        UNIQUE (use_case, metric, comparison, hard)
    );
    INSERT INTO reviewed_criteria(use_case, metric, comparison, threshold, hard, source_id, rationale, updated_at)
        SELECT use_case, metric, comparison, threshold, hard, source_id, rationale, updated_at FROM acceptance_criteria;
    DROP TABLE acceptance_criteria;
    ALTER TABLE reviewed_criteria RENAME TO acceptance_criteria;
    ALTER TABLE use_case_policies ADD COLUMN priority_higher_is_better INTEGER;
    ALTER TABLE use_case_policies ADD COLUMN tie_breaker_higher_is_better INTEGER;
    ALTER TABLE use_case_policies ADD COLUMN near_best_margin REAL;
    ALTER TABLE use_case_policies ADD COLUMN near_best_relative INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE use_case_policies ADD COLUMN family_order TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE use_case_policies ADD COLUMN reviewed_by TEXT;
    CREATE TABLE reviewed_use_cases (
        use_case    TEXT PRIMARY KEY,
        reviewed_by TEXT,
        reviewed_at TEXT NOT NULL
    );
    INSERT INTO reviewed_use_cases(use_case, reviewed_at)
        SELECT use_case, max(updated_at) FROM (SELECT use_case, updated_at FROM acceptance_criteria
                                               UNION ALL SELECT use_case, updated_at FROM use_case_policies) GROUP BY use_case;
    CREATE TABLE metric_directions (
        metric           TEXT PRIMARY KEY,
        higher_is_better INTEGER NOT NULL CHECK (higher_is_better IN (0, 1)),
        set_by           TEXT,
        set_at           TEXT NOT NULL
    );
    CREATE TABLE document_use_cases (
        origin   TEXT PRIMARY KEY,
        use_case TEXT NOT NULL,
        set_by   TEXT,
        set_at   TEXT NOT NULL
    );
    """,
    # the decision is shown first and stored at once; the LLM's explanation of it is added when it is done
    """
    ALTER TABLE answers ADD COLUMN explanation TEXT NOT NULL DEFAULT '';
    ALTER TABLE answers ADD COLUMN explanation_state TEXT NOT NULL DEFAULT 'none'
        CHECK (explanation_state IN ('none', 'pending', 'kept', 'partial', 'dropped', 'failed'));
    ALTER TABLE answers ADD COLUMN explanation_draft TEXT NOT NULL DEFAULT '';
    """,
    # 9: who last wrote a registry entry by hand; NULL for entries generated from documents and MLflow, which a
    # refresh may update (engine.knowledge.sources.refresh_sources), while an admin's entries stay the admin's
    """
    ALTER TABLE sources ADD COLUMN edited_by TEXT;
    """,
    # 10: sources an admin marks internal are for logged-in users only (engine.knowledge.sources.public_chunks_sql)
    """
    ALTER TABLE sources ADD COLUMN internal INTEGER NOT NULL DEFAULT 0 CHECK (internal IN (0, 1));
    CREATE INDEX sources_internal ON sources(source_id) WHERE internal = 1;
    """,
]


def connect(path: Path | str) -> sqlean.Connection:
    """Open (creating if needed) a knowledge database with extensions loaded and the schema up to date."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlean.connect(str(path), check_same_thread=False, isolation_level=None)
    connection.enable_load_extension(True)
    sqlite_vec.load(connection)
    connection.enable_load_extension(False)
    connection.row_factory = sqlean.Row
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    _use_wal(connection)
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA synchronous=NORMAL")
    migrate(connection)
    return connection


def _use_wal(connection: sqlean.Connection) -> None:
    """Switch a new file to WAL (a setting stored in the file). Two processes opening the same new file both hold a
    read lock when they ask for the exclusive one; SQLite refuses one of them at once instead of waiting (waiting
    would deadlock), so that one tries again, within the busy timeout, and then finds the file in WAL already."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlean.OperationalError as error:
            if error.sqlite_errorname != "SQLITE_BUSY" or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def schema_version(connection: sqlean.Connection) -> int:
    return connection.execute("PRAGMA user_version").fetchone()[0]


def migrate(connection: sqlean.Connection) -> int:
    """Apply the migrations this database has not seen yet, all in one transaction.

    The version is read again under the write lock: another process opening the same new file may have
    migrated it meanwhile, and a step must never run twice. An up-to-date database takes no lock."""
    if _check_version(connection) == len(MIGRATIONS):
        return len(MIGRATIONS)
    with transaction(connection):
        current = _check_version(connection)
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in _statements(script):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {version}")
    return schema_version(connection)


def _check_version(connection: sqlean.Connection) -> int:
    current = schema_version(connection)
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"knowledge database schema version {current} is newer than this deploywise ({len(MIGRATIONS)}); upgrade deploywise"
        )
    return current


@contextmanager
def transaction(connection: sqlean.Connection) -> Iterator[sqlean.Connection]:
    """One all-or-nothing write: BEGIN IMMEDIATE takes the write lock up front so concurrent writers queue."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements, keeping trigger bodies whole."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlean.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


def utc_now() -> str:
    """Timestamps are stored as ISO-8601 UTC text, which sorts correctly."""
    return datetime.now(UTC).isoformat(timespec="seconds")
