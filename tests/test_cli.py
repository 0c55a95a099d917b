"""The `deploywise` command: exit codes, JSON output, and the same engine functions as the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main


@pytest.fixture
def workspace(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_ingest_then_search_as_json(workspace, tmp_path, capsys):
    write(tmp_path / "docs/criteria.md", b"---\nsource_id: criteria:digits\n---\n# Digits\nModel size must stay under 10 MB for phones.")
    write(tmp_path / "docs/broken.pdf", b"not really a pdf")
    assert main(["ingest", str(tmp_path / "docs"), "--json"]) == 1
    outcomes = {o["name"]: o for o in json.loads(capsys.readouterr().out)}
    assert outcomes["criteria.md"]["status"] == "added"
    assert "not a PDF" in outcomes["broken.pdf"]["error"]

    assert main(["search", "how big may the model be on phones", "--json", "-k", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["source_id"] == "criteria:digits"


def test_ingest_of_a_missing_path_is_a_usage_error(workspace, capsys):
    assert main(["ingest", "/no/such/file.md"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_sources_export_and_import(workspace, tmp_path, capsys):
    good = write(tmp_path / "sources.csv", b"source_id,display_name,url,kind\nguideline:x,Guide X,https://wiki.example.com/x,guideline\n")
    assert main(["sources", "import", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"imported": 1}
    bad = write(tmp_path / "bad.csv", b"source_id,display_name,url\nguideline:y,Y,notaurl\n")
    assert main(["sources", "import", str(bad)]) == 1
    assert "line 2" in capsys.readouterr().err
    assert main(["sources", "export", "-"]) == 0
    assert capsys.readouterr().out.splitlines() == ["source_id,display_name,url,kind,internal",
                                                    "guideline:x,Guide X,https://wiki.example.com/x,guideline,false"]


def test_bad_setting_stops_with_the_key_named(monkeypatch, capsys):
    monkeypatch.setenv("DEPLOYWISE_SEARCH_TOP_K", "lots")
    assert main(["search", "anything"]) == 2
    assert "DEPLOYWISE_SEARCH_TOP_K" in capsys.readouterr().err


def test_installed_command_runs(workspace):
    script = Path(sys.executable).with_name("deploywise")
    result = subprocess.run([str(script), "search", "latency", "--json"], capture_output=True, text=True, env=os.environ, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_import_uc_dry_run_then_import_with_an_override(workspace, databricks, capsys):
    args = ["import-uc", "main.gold", "--warehouse", "wh-1", "--tables", "eval_notes"]
    assert main([*args, "--dry-run", "--text-columns", "eval_notes=note,model_name", "--json"]) == 0
    [plan] = json.loads(capsys.readouterr().out)
    assert plan["table"] == "main.gold.eval_notes" and plan["text_columns"] == ["note", "model_name"]
    assert main([*args, "--json"]) == 0
    [outcome] = json.loads(capsys.readouterr().out)
    assert outcome["added"] == outcome["rows_read"] > 0
    assert main([*args, "--json"]) == 0  # a second run changes nothing
    assert json.loads(capsys.readouterr().out)[0]["unchanged"] == outcome["added"]


def test_import_uc_of_an_unknown_table_fails_cleanly(workspace, databricks, capsys):
    assert main(["import-uc", "main.gold", "--warehouse", "wh-1", "--tables", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["import-uc", "main.gold", "--warehouse", "wh-1", "--text-columns", "ghost=a"]) == 1
    assert "ghost" in capsys.readouterr().err


def test_import_sql_from_a_sqlite_file(workspace, tmp_path, capsys):
    from databricks_server import write_sqlite

    database = tmp_path / "gold.db"
    write_sqlite(database)
    assert main(["import-sql", f"sqlite:///{database}", "--tables", "deployment_reviews", "--json"]) == 0
    [outcome] = json.loads(capsys.readouterr().out)
    assert outcome["table"] == "deployment_reviews" and outcome["added"] > 0
    assert main(["import-sql", "notaurl://", "--json"]) == 1
    assert capsys.readouterr().err.startswith("deploywise: ")


def test_train_cpt_refuses_a_bad_config_or_override_before_anything_runs(workspace, tmp_path, capsys):
    bad = write(tmp_path / "cpt.yaml", b"lora:\n  r: many\nlearning_rat: 1e-4\n")
    assert main(["train", "cpt", "--config", str(bad)]) == 2
    error = capsys.readouterr().err
    assert "lora.r: must be a whole number (got 'many')" in error and "learning_rat: unknown key" in error
    root = Path(__file__).resolve().parents[1]
    assert main(["train", "cpt", "--config", str(root / "configs/cpt.yaml"),
                 "--set", "quantization=8bit", "--set", "lora.dropout=1.5"]) == 2
    assert "quantization: must be 'none' or '4bit'" in capsys.readouterr().err
    assert main(["train", "cpt", "--set", "max_steps"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["jobs", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # nothing was recorded, nothing submitted
    assert main(["jobs", "cancel", "cpt-none"]) == 2
    assert "no training job cpt-none" in capsys.readouterr().err
