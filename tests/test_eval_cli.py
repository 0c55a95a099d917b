"""`deploywise eval`: exit 0 when every version gets GO, 1 otherwise, 2 for a request that cannot run (nothing written)."""

from __future__ import annotations

import json

import pytest
from test_eval_harness import opening

from cli.main import main
from engine.core.settings import load_settings
from eval.results import evaluation_history

# A golden set of its own (so it is not a subset): one question the LLM answers, one the chat refuses without it.
GOLDEN = [
    {"id": "ts-crit-1", "question": "What F1 score must a tumour screening model reach?", "type": "static",
     "category": "criteria", "use_case": "tumor-screening", "key_facts": ["0.95"], "expected_sources": ["criteria:tumor-screening"]},
    {"id": "ref-1", "question": "What is the capital of France?", "type": "refusal", "category": "off-topic"},
]
LENIENT = "accuracy_min: 0\ncitation_presence_min: 0\nrefusal_accuracy_min: 0.5\nlatency_p95_ms_max: 600000\n"


@pytest.fixture
def files(tmp_path):
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps(item) + "\n" for item in GOLDEN), encoding="utf-8")
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text(LENIENT, encoding="utf-8")
    return golden, lenient


@pytest.mark.parametrize("arguments, problem", [
    (["--versions", "latest"], "unknown LLM version 'latest': use base, champion or a version number"),
    (["--versions", " , "], "no LLM version to evaluate"),
    (["--versions", "base", "--golden", "{bad}"], "line 1: not valid JSON"),
    (["--versions", "base", "--gate", "{gate}"], "latency_p95_ms: unknown key"),
    (["--versions", "base", "--items", "nope"], "no golden item nope"),
])
def test_a_request_that_cannot_run_exits_2_with_one_line(tmp_path, capsys, arguments, problem):
    (tmp_path / "bad.jsonl").write_text("{oops\n", encoding="utf-8")
    (tmp_path / "gate.yaml").write_text("latency_p95_ms: 10\n", encoding="utf-8")
    arguments = [a.format(bad=tmp_path / "bad.jsonl", gate=tmp_path / "gate.yaml") for a in arguments]
    assert main(["eval", *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("deploywise: ") and problem in error and error.count("\n") == 1
    assert not (tmp_path / "workspace" / "evaluations").exists()


def test_an_unknown_registry_version_exits_2(tmp_path, capsys):
    assert main(["eval", "--versions", "base,4"]) == 2
    assert "LLM version 4: the MLflow registry has no LLM version deploywise-llm/4" in capsys.readouterr().err
    assert evaluation_history(load_settings()) == []


def test_no_go_exits_1_and_go_exits_0(demo_workspace, tiny_llama_folder, files, monkeypatch, capsys):
    golden, lenient = files
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(demo_workspace))
    monkeypatch.setenv("DEPLOYWISE_BASE_MODEL", str(tiny_llama_folder))
    assert main(["eval", "--versions", "base", "--golden", str(golden)]) == 2  # the chat's llama.cpp has no GGUF of it
    assert "LLM version base: the base model" in capsys.readouterr().err
    monkeypatch.setenv("DEPLOYWISE_LLM_BACKEND", "transformers")
    assert main(["eval", "--versions", "base", "--golden", str(golden), "--max-new-tokens", "4", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    [base] = report["versions"]
    assert (report["items_evaluated"], report["items_total"], report["all_go"]) == (2, 2, False)
    assert base["verdict"] == "NO-GO" and "accuracy 0% is below the gate's 95%" in base["reasons"]
    assert [item["id"] for item in base["items"]] == ["ts-crit-1", "ref-1"] and base["items"][1]["refused"] is True
    asked, refusal = base["items"]
    assert (asked["explanation_state"], refusal["explanation_state"]) == ("dropped", "none")  # a tiny random model's gibberish
    assert asked["answer"].startswith(opening("tumor-screening-linear"))
    assert base["metrics"]["explanation_kept_rate"] == base["metrics"]["explanation_shown_rate"] == 0.0
    assert "fallback_rate" not in base["metrics"]
    assert f"evaluation {report['evaluation_id']}" in captured.err and "base: golden item 1/2 (ts-crit-1)" in captured.err

    assert main(["eval", "--versions", "base", "--golden", str(golden), "--gate", str(lenient), "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert "base (base:model): GO" in text and "- refusal accuracy 100% meets the gate's 50%" in text
    assert "explanations kept 0%, explanations shown 0%" in text
    assert [summary.versions[0].verdict for summary in evaluation_history(load_settings())] == ["GO", "NO-GO"]
