"""Hostile and colliding files (issue 14, findings 1 and 6a): alias bombs in front matter and training configs, ZIP
bombs posing as DOCX, oversized PDFs, and two files with one name that must stay two documents."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import SimpleNamespace

import docx
import pytest
from tests_support import make_pdf

from cli.main import main
from engine.core.settings import load_settings
from engine.knowledge.documents import DocumentError, parse_file
from engine.knowledge.ingest import ingest_files
from engine.knowledge.workspace import ingest_paths, make_chunker, open_knowledge_base
from engine.rules.criteria import assign_document, document_assignments
from ui.knowledge_views import ingest_uploads

# Nine levels of nine aliases: 387 million 'lol's (about 3 GB) once anything turns the value into text.
ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi")
)
HEADROOM = 512 * 1024 * 1024  # bytes of address space the checked code may add to the interpreter's


def run_bounded(imports: str, body: str, *args: str):
    """Run `body` (which sets `result`) in a fresh interpreter allowed HEADROOM more memory than after `imports`, and
    60 s; returns `result`. An unbounded expansion ends in MemoryError (or the timeout), failing the test."""
    script = "\n".join([
        "import json, resource, sys",
        textwrap.dedent(imports),
        "size = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024",
        f"resource.setrlimit(resource.RLIMIT_AS, (size + {HEADROOM}, size + {HEADROOM}))",
        textwrap.dedent(body),
        "print(json.dumps(result))",
    ])
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_an_alias_bomb_in_front_matter_is_refused_in_bounded_memory():
    result = run_bounded("from engine.knowledge.documents import DocumentError, parse_file", """
        try:
            parse_file("bomb.md", ("---\\n" + sys.argv[1] + "title: Bomb\\n---\\n# Bomb\\nText.").encode())
            result = "accepted"
        except DocumentError as error:
            result = str(error)
    """, ALIAS_BOMB)
    assert result.startswith("front matter: ") and "alias bomb" in result
    # anchors and merge keys within bounds are still read
    document = parse_file("notes.md", b"---\nbase: &base {owner: ml-team}\nreview:\n  <<: *base\n  by: ops\n---\n# Notes\nText.")
    assert document.metadata["review"] == str({"owner": "ml-team", "by": "ops"})


def test_an_alias_bomb_in_a_training_config_is_refused_in_bounded_memory(tmp_path):
    (tmp_path / "cpt.yaml").write_text(ALIAS_BOMB + "lora: *i\n", encoding="utf-8")
    result = run_bounded("from training.config import ConfigError, load_config\nfrom ui.retraining_form import config_from_yaml_text", """
        result = []
        for load in (lambda: load_config("cpt", sys.argv[1]), lambda: config_from_yaml_text(open(sys.argv[1]).read())):
            try:
                load()
                result.append("accepted")
            except ConfigError as error:
                result.append(str(error))
    """, str(tmp_path / "cpt.yaml"))
    assert len(result) == 2 and all("alias bomb" in problem for problem in result)


@pytest.mark.parametrize(("text", "problem"), [
    ("a: &a [*a]", "recursive alias"),
    ("a: " + "[" * 60 + "]" * 60, "nested more than 50 levels"),
    ("a: 1\n" + "#" * 100_000, "characters long"),
])
def test_front_matter_that_cannot_be_read_safely_is_named(text, problem):
    with pytest.raises(DocumentError, match=problem):
        parse_file("notes.md", f"---\n{text}\n---\n# Notes\nText.".encode())


def docx_with(document_xml_repeats: int = 0, extra_parts: int = 0) -> bytes:
    """A real Word file (python-docx's template) whose body repeats one paragraph, with extra unreferenced parts."""
    buffer = io.BytesIO()
    docx.Document().save(buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "word/document.xml" and document_xml_repeats:
                head, body, tail = data.partition(b"<w:body>")
                with archive.open(info.filename, "w", force_zip64=True) as part:
                    part.write(head + body)
                    paragraphs = b"<w:p><w:r><w:t>bomb</w:t></w:r></w:p>" * 100_000
                    for _ in range(document_xml_repeats // 100_000):
                        part.write(paragraphs)
                    part.write(tail)
            else:
                archive.writestr(info, data)
        for number in range(extra_parts):
            archive.writestr(f"extra/part{number}.xml", b"<a/>")
    return out.getvalue()


def test_a_zip_bomb_posing_as_docx_is_refused_in_bounded_time_and_memory(tmp_path):
    bomb = docx_with(document_xml_repeats=6_000_000)  # 228 MB of XML in a file of a few hundred KB
    assert len(bomb) < 2 * 1024 * 1024
    (tmp_path / "bomb.docx").write_bytes(bomb)
    result = run_bounded("from engine.knowledge.documents import DocumentError, parse_file", """
        try:
            parse_file("bomb.docx", open(sys.argv[1], "rb").read())
            result = "accepted"
        except DocumentError as error:
            result = str(error)
    """, str(tmp_path / "bomb.docx"))
    assert "ZIP bomb" in result and "word/document.xml" in result


def test_a_docx_of_too_many_parts_is_refused():
    with pytest.raises(DocumentError, match="parts, more than"):
        parse_file("parts.docx", docx_with(extra_parts=3_000))


def test_a_pdf_of_too_many_pages_is_refused():
    with pytest.raises(DocumentError, match="5,001 pages"):
        parse_file("long.pdf", make_pdf(["x"] * 5_001))


@pytest.fixture
def workspace(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def stored_documents() -> dict[str, tuple[str, set[str]]]:
    """origin -> (title, source ids its chunks cite) of every stored document."""
    kb = open_knowledge_base(load_settings())
    try:
        return {d.origin: (d.title, {c.source_id for c in kb.chunks(document_id=d.id)}) for d in kb.documents()}
    finally:
        kb.connection.close()


def test_two_same_named_files_of_one_folder_ingest_are_both_kept(workspace, tmp_path, capsys):
    write(tmp_path / "docs/fraud/README.md", "# Fraud rules\nThe fraud model must reach a recall of 0.9.")
    write(tmp_path / "docs/churn/README.md", "# Churn rules\nThe churn model must answer within 50 ms.")
    assert main(["ingest", str(tmp_path / "docs"), "--json"]) == 0
    outcomes = {o["name"]: o["status"] for o in json.loads(capsys.readouterr().out)}
    assert outcomes == {"churn/README.md": "added", "fraud/README.md": "added"}
    assert stored_documents() == {"file:churn/README.md": ("Churn rules", {"doc:churn/readme.md"}),
                                  "file:fraud/README.md": ("Fraud rules", {"doc:fraud/readme.md"})}

    write(tmp_path / "docs/fraud/README.md", "# Fraud rules\nThe fraud model must reach a recall of 0.95.")
    assert main(["ingest", str(tmp_path / "docs"), "--json"]) == 0
    outcomes = {o["name"]: o["status"] for o in json.loads(capsys.readouterr().out)}
    assert outcomes == {"churn/README.md": "unchanged", "fraud/README.md": "updated"}
    assert len(stored_documents()) == 2


def test_two_different_files_under_one_name_in_one_ingest_are_refused_not_overwritten(workspace, tmp_path, capsys):
    write(tmp_path / "fraud/README.md", "# Fraud rules\nThe fraud model must reach a recall of 0.9.")
    write(tmp_path / "churn/README.md", "# Churn rules\nThe churn model must answer within 50 ms.")
    assert main(["ingest", str(tmp_path / "fraud"), str(tmp_path / "churn"), "--json"]) == 1
    first, second = json.loads(capsys.readouterr().out)
    assert first["status"] == "added" and second["status"] == "failed"
    assert "another file of this batch is also called README.md" in second["error"]
    assert stored_documents() == {"file:README.md": ("Fraud rules", {"doc:readme.md"})}


def upload(name: str, text: str):
    return SimpleNamespace(name=name, getvalue=lambda: text.encode())


def test_a_same_named_upload_in_one_batch_is_refused_and_a_later_edit_updates(kb, chunker, settings):
    outcomes = ingest_uploads(kb, chunker, [upload("handbook.md", "# Handbook\nShip on Fridays."),
                                            upload("handbook.md", "# Other handbook\nNever ship on Fridays.")],
                              settings.max_upload_bytes)
    assert [o.status for o in outcomes] == ["added", "failed"] and "rename one of them" in outcomes[1].error
    [edited] = ingest_uploads(kb, chunker, [upload("handbook.md", "# Handbook\nShip on Thursdays.")], settings.max_upload_bytes)
    assert edited.status == "updated"
    assert [(d.origin, d.title) for d in kb.documents()] == [("file:handbook.md", "Handbook")]
    assert "Thursdays" in kb.chunks(document_id=edited.document_id)[0].text


def test_a_subfolder_file_stored_by_its_bare_name_takes_its_path_and_keeps_its_use_case(settings, tmp_path):
    text = "# Guide\nThe fraud model must reach a recall of 0.9."
    kb = open_knowledge_base(settings)
    try:  # what earlier versions stored for docs/team/guide.md
        assert ingest_files(kb, make_chunker(settings), [("guide.md", text.encode())])[0].status == "added"
        assign_document(kb.connection, "file:guide.md", "fraud detection")
    finally:
        kb.connection.close()
    write(tmp_path / "docs/team/guide.md", text)
    assert [o.status for o in ingest_paths(settings, [tmp_path / "docs"])] == ["unchanged"]
    write(tmp_path / "docs/team/guide.md", text.replace("0.9", "0.95"))
    assert [o.status for o in ingest_paths(settings, [tmp_path / "docs"])] == ["updated"]
    kb = open_knowledge_base(settings)
    try:
        assert [d.origin for d in kb.documents()] == ["file:team/guide.md"]
        assert document_assignments(kb.connection) == {"file:team/guide.md": "fraud detection"}
    finally:
        kb.connection.close()
