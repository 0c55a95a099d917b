"""The SFT data page in a real Streamlit script run (AppTest) on a copy of the demo workspace: datasets with their
drops, review (accept all shown), export and download, and a malformed generation request refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from engine.core import database
from engine.core.settings import load_settings
from tests.rendered_markdown import parse
from training.sft_data import add_pairs, create_dataset, get_dataset
from training.sft_pair_checks import PairCandidate

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "sft_data.py")


def button(at, label_start: str):
    return next(b for b in at.button if b.label.startswith(label_start))


def test_review_accept_all_shown_and_export(demo_copy):
    settings = load_settings(workspace=demo_copy())
    connection = database.connect(settings.knowledge_db)
    create_dataset(connection, "page-demo", {"styles": ["factual"]})
    add_pairs(connection, "page-demo", [
        PairCandidate("factual", "Who keeps the deployment decision log?", "The ML platform team <<SRC:decisions:log>>.", "test"),
        PairCandidate("factual", "Which family wins a near-best tie?", "The simplest family <<SRC:guideline:model-selection>>.", "test"),
        PairCandidate("factual", "Is this one usable?", "It cites nothing at all, so nobody can check it.", "test"),
    ])
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["settings"] = settings
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "SFT data"
    assert [tab.label for tab in at.tabs] == ["Datasets", "Generate", "Review", "Chunks"]
    table = at.dataframe[0].value
    assert table.loc[0, "name"] == "page-demo" and (table.loc[0, "pending"], table.loc[0, "dropped"]) == (2, 1)
    assert "unknown_marker" in set(at.dataframe[1].value["reason"])  # drops by reason for the chosen dataset

    button(at, "Accept all 2 shown").click().run()
    assert not at.exception, at.exception
    assert get_dataset(connection, "page-demo").accepted == 2
    button(at, "Export accepted pairs").click().run()
    assert not at.exception, at.exception
    exported = settings.workspace / "exports" / "sft" / "page-demo.jsonl"
    assert [json.loads(line)["style"] for line in exported.read_text().splitlines()] == ["factual", "factual"]
    assert any(b.label == "Download page-demo.jsonl" for b in at.get("download_button"))

    before = connection.execute("SELECT count(*) FROM sft_datasets").fetchone()[0]
    at.text_input[0].set_value("Bad Name!")
    button(at, "Generate").click().run()
    assert [parse(e.value).visible for e in at.error] == ["Nothing was changed: dataset name 'Bad Name!' must be 1-64 lowercase letters, "
                                           "digits, '.', '_' or '-', starting with a letter or digit"]
    assert connection.execute("SELECT count(*) FROM sft_datasets").fetchone()[0] == before
    connection.close()
