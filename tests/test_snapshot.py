"""Dataset snapshots on the real demo knowledge base and the real tokenizer: identity, split, replay mix, errors."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from engine.answering.feedback_review import accept, reject, reopen, save_correction, text_digest
from engine.answering.records import AnswerRecord, save_answer, save_feedback
from engine.core.settings import load_settings
from engine.knowledge.ingest import ingest_one
from engine.knowledge.knowledge_base import KnowledgeBase
from engine.llm.bundled import load_tokenizer
from training.dataset_snapshot import (
    SnapshotError,
    accepted_corrections,
    build_snapshot,
    changes_since,
    list_snapshots,
    preview_snapshot,
    read_split,
    snapshot_workspace,
    snapshots_dir,
    tokenizer_name,
)


@pytest.fixture
def demo_settings(demo_copy):
    return load_settings(workspace=demo_copy())


def token_count(text: str) -> int:
    return len(load_tokenizer("bundled")(text, add_special_tokens=False)["input_ids"])


def test_same_inputs_give_the_same_id_and_byte_identical_files(demo_settings, demo_copy):
    first = snapshot_workspace(demo_settings)
    again = snapshot_workspace(demo_settings)
    elsewhere = snapshot_workspace(load_settings(workspace=demo_copy()))

    assert first.id == again.id == elsewhere.id
    assert sorted(path.name for path in snapshots_dir(demo_settings.workspace).iterdir()) == [first.id]
    for name in ("train.jsonl", "validation.jsonl"):
        assert (first.directory / name).read_bytes() == (elsewhere.directory / name).read_bytes()
    assert (first.directory / "manifest.json").read_bytes() == (again.directory / "manifest.json").read_bytes()
    assert {key: value for key, value in first.manifest.items() if key != "created_at"} == {
        key: value for key, value in elsewhere.manifest.items() if key != "created_at"
    }


def test_preview_counts_without_writing_and_matches_the_build(demo_settings):
    preview = snapshot_workspace(demo_settings, write=False)
    assert not preview.exists and not snapshots_dir(demo_settings.workspace).exists()

    built = snapshot_workspace(demo_settings)
    assert built.id == preview.id and built.exists
    assert list_snapshots(demo_settings.workspace) == [built]
    assert built.manifest["splits"] == preview.manifest["splits"]


def test_an_edited_chunk_gives_a_new_id_and_shows_as_changed(demo_settings):
    before = snapshot_workspace(demo_settings)
    kb = KnowledgeBase.open(demo_settings)
    try:
        chunk = kb.chunks(limit=1)[0]
        kb.edit_chunk(chunk.id, chunk.text + "\n\nReviewed again in March.")
        origin = next(doc.origin for doc in kb.documents() if doc.id == chunk.document_id)
        changes = changes_since(before, kb)
    finally:
        kb.connection.close()

    after = snapshot_workspace(demo_settings)
    assert after.id != before.id
    assert changes.changed == [origin] and not changes.added and not changes.removed
    assert any("Reviewed again in March." in record["text"] for split in ("train", "validation")
               for record in read_split(after, split))


def test_no_document_is_on_both_sides_and_every_document_is_in(demo_settings):
    snapshot = snapshot_workspace(demo_settings, validation_share=0.3)
    train, validation = read_split(snapshot, "train"), read_split(snapshot, "validation")

    for kind in ("domain", "replay"):
        train_documents = {r["document"] for r in train if r["kind"] == kind}
        validation_documents = {r["document"] for r in validation if r["kind"] == kind}
        assert train_documents and validation_documents
        assert not train_documents & validation_documents
    domain_records = [r["document"] for r in train + validation if r["kind"] == "domain"]
    assert sorted(domain_records) == sorted(doc["origin"] for doc in snapshot.manifest["documents"])
    assert len(domain_records) == 10  # the demo corpus


@pytest.mark.parametrize("ratio", [0.2, 0.4])
def test_replay_is_the_configured_share_of_training_tokens(demo_settings, ratio):
    snapshot = snapshot_workspace(demo_settings, replay_ratio=ratio)
    for split in ("train", "validation"):
        records = read_split(snapshot, split)
        replay = sum(token_count(r["text"]) for r in records if r["kind"] == "replay")
        total = sum(token_count(r["text"]) for r in records)
        assert replay / total == pytest.approx(ratio, abs=0.01)
        assert snapshot.manifest["splits"][split]["replay_tokens"] == replay


def test_no_replay_when_the_ratio_is_zero(demo_settings):
    snapshot = snapshot_workspace(demo_settings, replay_ratio=0.0)
    assert all(r["kind"] == "domain" for split in ("train", "validation") for r in read_split(snapshot, split))


@pytest.mark.parametrize("ratio, share", [(1.0, 0.1), (-0.1, 0.1), (0.2, 0.0), (0.2, 0.9)])
def test_bad_settings_are_refused_and_nothing_is_written(demo_settings, ratio, share):
    with pytest.raises(SnapshotError, match="ratio|share"):
        snapshot_workspace(demo_settings, replay_ratio=ratio, validation_share=share)
    assert not snapshots_dir(demo_settings.workspace).exists()


def test_an_empty_knowledge_base_is_refused_and_nothing_is_written(settings):
    with pytest.raises(SnapshotError, match="0 document"):
        snapshot_workspace(settings)
    assert not snapshots_dir(settings.workspace).exists()


def test_two_small_documents_still_give_both_sides(kb, chunker, settings):
    for name, text in (("a.md", "# Alpha\n\nThe alpha model is deployed."), ("b.md", "# Beta\n\nBeta failed latency.")):
        assert ingest_one(kb, chunker, name, text.encode()).ok
    snapshot = build_snapshot(kb, load_tokenizer("bundled"), settings.workspace, tokenizer_label="bundled")
    sides = {doc["origin"]: doc["split"] for doc in snapshot.manifest["documents"]}
    assert sorted(sides.values()) == ["train", "validation"]
    assert preview_snapshot(kb, load_tokenizer("bundled"), settings.workspace, tokenizer_label="bundled").exists


def test_added_and_removed_documents_show_since_a_snapshot(kb, chunker, settings):
    for name in ("a.md", "b.md"):
        ingest_one(kb, chunker, name, f"# {name}\n\nNotes on {name}.".encode())
    snapshot = build_snapshot(kb, load_tokenizer("bundled"), settings.workspace, tokenizer_label="bundled")
    kb.delete_document(next(doc.id for doc in kb.documents() if doc.origin.endswith("a.md")))
    ingest_one(kb, chunker, "c.md", b"# c\n\nNew guideline.")

    changes = changes_since(snapshot, kb)
    assert [o.rsplit(":", 1)[-1] for o in changes.added] == ["c.md"]
    assert [o.rsplit(":", 1)[-1] for o in changes.removed] == ["a.md"]
    assert changes.changed == []


def test_cli_prints_the_snapshot_as_json(demo_settings, monkeypatch, capsys):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(demo_settings.workspace))
    assert main(["snapshot", "--replay-ratio", "0.25", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)

    assert payload["directory"] == str(snapshots_dir(demo_settings.workspace) / payload["id"])
    assert json.loads((snapshots_dir(demo_settings.workspace) / payload["id"] / "manifest.json").read_text())[
        "config"]["replay_ratio"] == 0.25
    assert payload["splits"]["train"]["domain_documents"] + payload["splits"]["validation"]["domain_documents"] == 10


def test_cli_refuses_a_bad_ratio_with_exit_code_2(demo_settings, monkeypatch, capsys):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(demo_settings.workspace))
    assert main(["snapshot", "--replay-ratio", "1.5"]) == 2
    assert "replay ratio" in capsys.readouterr().err
    assert not snapshots_dir(demo_settings.workspace).exists()


# --- accepted corrections of flagged answers ------------------------------------------------------------------------


def flag(connection, question: str, right: str) -> int:
    """A stored answer with a thumbs-down and the user's right answer."""
    answer_id = save_answer(connection, AnswerRecord(
        id=None, asked_at="2025-03-01T09:30:00+00:00", question=question, use_case="tumor-screening",
        answer="Recommendation: ts-forest.", answer_origin="llm", llm_version="base", recommended_model="ts-forest",
        candidates=[{"name": "ts-boosting", "version": "2", "alias": "champion", "family": "gradient-boosting",
                     "metrics": {"roc_auc": 0.9972}, "source_id": "registry:ts-boosting"}],
        decision={"recommended": "ts-boosting", "candidates": [{"name": "ts-boosting", "standing": "recommended"}]}))
    save_feedback(connection, answer_id, 0, "wrong model", right)
    return answer_id


def corrections_in(snapshot) -> dict[str, list[dict]]:
    return {split: [r for r in read_split(snapshot, split) if r["kind"] == "correction"] for split in ("train", "validation")}


def test_accepted_corrections_join_the_next_snapshots_train_split_and_change_its_id(demo_settings):
    before = snapshot_workspace(demo_settings)
    assert before.manifest["corrections"] == 0 and before.manifest["correction_documents"] == []
    kb = KnowledgeBase.open(demo_settings)
    try:
        accepted = flag(kb.connection, "Which model for tumour screening?", "Deploy ts-boosting, the champion.")
        rejected = flag(kb.connection, "Which model for digits?", "Deploy the CNN.")
        pending = flag(kb.connection, "Which model for diabetes?", "Deploy the ridge model.")
        reject(kb.connection, rejected)
        save_correction(kb.connection, pending, "Deploy the ridge model, checked.")
        assert preview_snapshot(kb, load_tokenizer("bundled"), demo_settings.workspace,
                                tokenizer_label=tokenizer_name("bundled")).id == before.id
        accept(kb.connection, accepted, note="matches the decision log")
        [record] = accepted_corrections(kb.connection)
    finally:
        kb.connection.close()

    after = snapshot_workspace(demo_settings)
    assert after.id != before.id
    found = corrections_in(after)
    assert found == {"train": [record], "validation": []}  # train only: see training.dataset_snapshot
    assert record == {"kind": "correction", "source_id": f"correction:answer-{accepted}", "document": f"correction:answer-{accepted}",
                      "text": record["text"]}
    assert record["text"].startswith("Question: Which model for tumour screening?")
    assert record["text"].endswith("Deploy ts-boosting, the champion.") and "ts-boosting version 2 (champion)" in record["text"]
    assert "Deploy the CNN" not in after.train_path.read_text() + after.validation_path.read_text()
    assert "ridge" not in after.train_path.read_text() + after.validation_path.read_text()

    tokens = token_count(record["text"])
    assert after.manifest["corrections"] == 1
    assert after.manifest["correction_documents"] == [{"document": f"correction:answer-{accepted}", "split": "train",
                                                       "text_sha256": text_digest(record["text"]), "tokens": tokens}]
    train, validation = after.manifest["splits"]["train"], after.manifest["splits"]["validation"]
    assert (train["correction_documents"], train["correction_tokens"]) == (1, tokens)
    assert train["domain"]["correction"] == {"documents": 1, "tokens": tokens}
    assert (validation["correction_documents"], validation["correction_tokens"]) == (0, 0)
    assert train["domain_tokens"] == before.manifest["splits"]["train"]["domain_tokens"] + tokens
    assert validation == before.manifest["splits"]["validation"]
    assert train["replay_share"] == pytest.approx(0.2, abs=0.01)  # replay stays 20% of the training tokens
    assert [doc["origin"] for doc in after.manifest["documents"]] == [doc["origin"] for doc in before.manifest["documents"]]


def test_reopening_a_correction_takes_it_out_and_gives_back_the_old_id(demo_settings):
    before = snapshot_workspace(demo_settings, write=False)
    kb = KnowledgeBase.open(demo_settings)
    try:
        answer_id = flag(kb.connection, "Which model for tumour screening?", "Deploy ts-boosting.")
        accept(kb.connection, answer_id)
        with_it = snapshot_workspace(demo_settings, write=False)
        reopen(kb.connection, answer_id)
        assert snapshot_workspace(demo_settings, write=False).id == before.id  # content-addressed: same data, same id
        accept(kb.connection, answer_id, "Deploy ts-boosting after the calibration check.")
        edited = snapshot_workspace(demo_settings)
    finally:
        kb.connection.close()
    assert len({before.id, with_it.id, edited.id}) == 3
    assert corrections_in(edited)["train"][0]["text"].endswith("Deploy ts-boosting after the calibration check.")
