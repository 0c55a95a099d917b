"""The source registry: validation, CSV round trip, all-or-nothing import, unknown id log."""

from __future__ import annotations

import pytest

from engine.knowledge import sources
from engine.knowledge.sources import Source, SourceError


def test_csv_round_trip(kb):
    entries = [
        Source("criteria:tumor-screening", "Acceptance criteria — tumour screening", "https://wiki.example.com/c", "guideline"),
        Source("doc:guide.pdf:page-3", "Guide, page 3", None, "document"),
    ]
    sources.upsert_sources(kb.connection, entries)
    exported = sources.export_csv(kb.connection)
    assert exported.splitlines()[0] == "source_id,display_name,url,kind,internal"
    assert sources.parse_csv(exported.encode()) == sorted(entries, key=lambda s: s.source_id)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"source_id,display_name\n", "no rows"),
        (b"id,name\nx:y,Name\n", "header lacks source_id, display_name"),
        (b"source_id,display_name,url\nBad Id,Name,\n", "line 2: source id 'Bad Id'"),
        (b"source_id,display_name,url\nx:y,Name,ftp://host/file\n", r"line 2: .*not an http\(s\) URL"),
        (b"source_id,display_name,url\nx:y,,\n", "line 2: .*display name is empty"),
        (b"source_id,display_name,kind\nx:y,Name,spaceship\n", "kind 'spaceship'"),
        (b"source_id,display_name\nx:y,A\nx:y,B\n", "line 3: source id x:y appears twice"),
        ("source_id,display_name\nx:y,Caf\u00e9\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_a_bad_csv_is_rejected_whole_and_changes_nothing(kb, snapshot, data, message):
    sources.upsert_sources(kb.connection, [Source("keep:me", "Kept")])
    before = snapshot(kb.connection)
    with pytest.raises(SourceError, match=message):
        sources.import_csv(kb.connection, data)
    assert snapshot(kb.connection) == before


def test_good_rows_are_not_stored_when_another_row_is_bad(kb):
    with pytest.raises(SourceError, match="line 3"):
        sources.import_csv(kb.connection, b"source_id,display_name,url\ngood:one,Fine,https://a.example.com\nbad,Broken,\n")
    assert sources.list_sources(kb.connection) == []


def test_unknown_ids_are_counted_and_cleared_when_registered(kb):
    sources.log_unknown(kb.connection, ["model:mystery"], context="answer 1")
    sources.log_unknown(kb.connection, ["model:mystery"], context="answer 2")
    [entry] = sources.unknown_sources(kb.connection)
    assert (entry["source_id"], entry["occurrences"], entry["context"]) == ("model:mystery", 2, "answer 2")
    sources.upsert_sources(kb.connection, [Source("model:mystery", "Mystery model", kind="model")])
    assert sources.unknown_sources(kb.connection) == []
    assert sources.resolve(kb.connection, ["model:mystery", "x:nope"]).keys() == {"model:mystery"}


def test_only_web_urls_are_links():
    assert sources.is_web_url("https://wiki.example.com/a")
    assert not sources.is_web_url("javascript:alert(1)")
    assert not sources.is_web_url("file:///etc/passwd")
    with pytest.raises(SourceError):
        Source("a:b", "x", url="data:text/html,<script>")


def test_refresh_writes_only_the_entries_that_changed(kb):
    first = Source("registry:ts-linear", "ts-linear v1", None, "model")
    assert sources.refresh_sources(kb.connection, [first]) == 1
    changes = kb.connection.total_changes
    assert sources.refresh_sources(kb.connection, [first]) == 0 and kb.connection.total_changes == changes
    promoted = Source("registry:ts-linear", "ts-linear v2", None, "model")
    assert sources.refresh_sources(kb.connection, [promoted]) == 1
    assert sources.resolve(kb.connection, ["registry:ts-linear"]) == {"registry:ts-linear": promoted}
