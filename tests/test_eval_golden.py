"""The shipped golden set (demo/golden.jsonl) against the demo workspace: well formed, every dynamic item applies to
the demo registry, every expected source resolves, and the chat routes each question to the item's use case (a
refusal to none), so the set measures the LLM and not a question the chat cannot place."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.answering.golden_set import DEFAULT_GOLDEN, load_golden
from engine.core.settings import load_settings
from engine.knowledge.workspace import open_knowledge_base
from engine.registry.candidate_cache import fetch_candidates
from engine.registry.candidates import candidate_sources
from engine.registry.use_cases import match_use_case
from engine.rules.rulebook import decision_for
from eval.golden import Expectation, resolve_item


@pytest.fixture(scope="module")
def demo(demo_copy):
    settings = load_settings(workspace=demo_copy())
    kb = open_knowledge_base(settings)
    snapshot = fetch_candidates(settings, max_age_s=0)
    yield settings, kb, snapshot
    kb.connection.close()


def test_the_golden_set_covers_the_demo_use_cases_with_every_kind_of_item():
    golden = load_golden(DEFAULT_GOLDEN)
    assert len(golden.items) >= 60
    kinds = Counter(item.type for item in golden.items)
    assert kinds["static"] >= 30 and kinds["dynamic"] >= 20 and kinds["refusal"] >= 10
    assert set(golden.use_cases()) == {"tumor-screening", "diabetes-progression", "digit-recognition"}
    for use_case in golden.use_cases():
        mine = [item for item in golden.items if item.use_case == use_case]
        assert {item.type for item in mine} == {"static", "dynamic"} and len(mine) >= 15
    assert {"recommendation", "rejection", "adversarial", "criteria", "ranking", "measurement", "history", "risks",
            "dataset"} <= set(golden.categories())


def test_every_item_applies_to_the_demo_registry_and_cites_known_sources(demo):
    _, kb, snapshot = demo
    golden = load_golden(DEFAULT_GOLDEN)
    registry = {s.source_id for s in candidate_sources(snapshot)}
    known = registry | {row[0] for row in kb.connection.execute("SELECT source_id FROM sources")}
    expectations = {uc: Expectation.from_decision(decision_for(kb.connection, uc, snapshot.for_use_case(uc), snapshot.candidates)[1])
                    for uc in golden.use_cases()}
    assert all(e.recommended for e in expectations.values())
    for item in golden.items:
        resolved = resolve_item(item, expectations.get(item.use_case))  # NotApplicable would fail the test
        unknown = [source for source in resolved.sources if source not in known]
        assert not unknown, f"{item.id} expects sources the demo registry lacks: {unknown}"


def test_the_chat_routes_every_question_to_its_use_case_and_refusals_to_none(demo):
    _, kb, snapshot = demo
    misrouted = []
    for item in load_golden(DEFAULT_GOLDEN).items:
        match = match_use_case(item.question, snapshot.candidates, kb.embed_queries)
        if match.use_case != item.use_case:
            misrouted.append(f"{item.id}: {match.use_case} ({match.similarity:.2f})")
    assert misrouted == []
