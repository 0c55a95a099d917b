"""What a citation opens inside the app (pages/source.py): its registry entry and the knowledge behind it.

Citations without a web URL of their own link here (engine.answering.citations.source_page_link), so that a cited PDF
page, a Unity Catalog row or a model of a local MLflow registry is never a dead end.

The page is public, the knowledge is not all public (engine.knowledge.sources): a visitor sees only what
`readable` allows, by exact id (never a listing of every id under a prefix), and `SourceView.refused` is the same
for a source that is not public and for one that does not exist, so a refusal reveals nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.access.roles import may_read_internal
from engine.knowledge.knowledge_base import StoredChunk
from engine.knowledge.sources import SOURCE_ID_PATTERN, Source, SourceError, readable, resolve
from engine.registry.candidates import Candidate, candidate_source
from engine.registry.metric_keys import display_order, metric_spec

MAX_CHUNKS = 200


@dataclass(frozen=True)
class SourceView:
    source_id: str
    entry: Source | None  # the registry entry; None for an id the registry lacks
    chunks: list[StoredChunk]  # the knowledge of this id and of the ids under it, in document order
    candidate: Candidate | None  # a cited registry model, with its metrics as last read
    refused: bool = False  # the caller may not read it, or it does not exist and the caller may not know which

    @property
    def found(self) -> bool:
        return bool(self.entry or self.chunks or self.candidate)

    def metric_rows(self) -> list[dict]:
        """The cited model's metrics, in the catalog's order, each with its unit and which way is better."""
        metrics = self.candidate.metrics if self.candidate else {}
        names = display_order(metrics)
        return [{"metric": metric_spec(name).label, "value": metric_spec(name).format(metrics[name]),
                 "better": {True: "higher", False: "lower", None: "not known"}[metric_spec(name).higher_is_better]} for name in names]


def parse_source_id(text: str | None) -> str:
    """The id from a URL's query, checked: a malformed one raises SourceError with what a source id looks like."""
    source_id = (text or "").strip()
    if not SOURCE_ID_PATTERN.match(source_id):
        raise SourceError(f"{source_id!r} is not a source id: expected 'domain:entity', e.g. criteria:tumor-screening")
    return source_id


def source_view(kb, source_id: str, candidates=()) -> SourceView:
    """`candidates` are the ones last read from MLflow: a model is cited before any answer registered it."""
    if not readable(kb.connection, source_id):
        return SourceView(source_id, None, [], None, refused=True)
    candidate = next((c for c in candidates if c.source_id == source_id), None)
    entry = resolve(kb.connection, [source_id]).get(source_id) or (candidate_source(candidate) if candidate else None)
    view = SourceView(source_id, entry, kb.chunks(source_id=source_id, under=may_read_internal(), limit=MAX_CHUNKS), candidate)
    return view if view.found or may_read_internal() else SourceView(source_id, None, [], None, refused=True)
