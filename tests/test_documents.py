"""Parsing every supported format, and a clear error for every kind of unusable file."""

from __future__ import annotations

import io
import zipfile

import pytest
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter
from tests_support import make_docx, make_pdf

from engine.knowledge.documents import DocumentError, parse_file


def encrypted_pdf() -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["Confidential criteria."]))))
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_pdf_keeps_page_numbers_in_source_ids():
    data = make_pdf(["Latency budget is 10 ms.", "Model size budget is 20 MB."], title="Serving Guide")
    document = parse_file("Serving Guide.pdf", data)
    assert document.title == "Serving Guide"
    assert [s.source.source_id for s in document.sections] == ["doc:serving-guide.pdf:page-1", "doc:serving-guide.pdf:page-2"]
    assert "20 MB" in document.sections[1].text
    assert document.sections[1].source.display_name == "Serving Guide, page 2"
    assert document.metadata["pages"] == 2


def test_docx_paragraphs_and_tables():
    data = make_docx("Review notes", ["The random forest was rejected."], [["metric", "threshold"], ["f1", "0.95"]])
    document = parse_file("review.docx", data)
    assert document.title == "Review notes"
    assert "random forest was rejected" in document.sections[0].text
    assert "f1 | 0.95" in document.sections[0].text
    assert document.sections[0].source.source_id == "doc:review.docx"


def test_markdown_front_matter_sets_source_and_metadata():
    data = (b"---\ntitle: Criteria\nsource_id: criteria:tumor-screening\nurl: https://wiki.example.com/c\nkind: guideline\n"
            b"owner: ml-platform\n---\n# Heading\nf1 >= 0.95\n")
    document = parse_file("criteria.md", data)
    section = document.sections[0]
    assert document.title == "Criteria"
    assert section.source.source_id == "criteria:tumor-screening"
    assert section.source.url == "https://wiki.example.com/c"
    assert section.source.kind == "guideline"
    assert document.metadata["owner"] == "ml-platform"
    assert "source_id" not in section.text


def test_markdown_title_falls_back_to_first_heading():
    assert parse_file("notes.md", b"intro\n# Real title\nbody").title == "Real title"


def test_html_drops_scripts_and_uses_title():
    data = (b"<html><head><title>Guide</title><script>alert(1)</script></head>"
            b"<body><h1>Rules</h1><p>Use the champion alias.</p></body></html>")
    document = parse_file("guide.html", data)
    assert document.title == "Guide"
    assert "champion alias" in document.sections[0].text
    assert "alert" not in document.sections[0].text


def test_html_declared_charset_is_honoured():
    data = '<html><head><meta charset="iso-8859-1"><title>Modèle</title></head><body>Précis</body></html>'.encode("latin-1")
    document = parse_file("page.html", data)
    assert document.title == "Modèle"
    assert document.metadata["encoding"] == "iso-8859-1"


def test_utf16_with_bom_is_read():
    document = parse_file("notes.txt", "Gradient boosting wins.".encode("utf-16"))
    assert document.sections[0].text == "Gradient boosting wins."


def test_same_bytes_give_same_sha256():
    assert parse_file("a.txt", b"same text").sha256 == parse_file("b.txt", b"same text").sha256


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.txt", b"", "file is empty"),
        ("blank.md", b"   \n\n  ", "file is empty"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), "binary data"),
        ("archive.md", zipfile.ZipFile.__doc__.encode() + b"\x00\x01\x02" * 50, "binary data"),
        ("fake.pdf", b"Just some text that pretends to be a PDF", "not a PDF"),
        ("fake.docx", b"plain text, not a zip", "not a DOCX"),
        ("latin1.txt", "Le modèle est très précis.".encode("latin-1"), "not valid UTF-8"),
        ("bad-utf16.txt", b"\xff\xfe" + b"\x00\xd8" + b"a\x00", "UTF-16"),
        ("unknown.xlsx", b"whatever", "unsupported file type"),
        ("frontmatter.md", b"---\ntitle: [unclosed\n---\nbody", "front matter: not valid YAML"),
        ("badsource.md", b"---\nsource_id: Not An Id\n---\nbody text", "not 'domain:entity'"),
        ("badurl.md", b"---\nsource_id: a:b\nurl: javascript:alert(1)\n---\nbody text", r"not an http\(s\) URL"),
    ],
)
def test_unusable_files_get_a_clear_error(name, data, message):
    with pytest.raises(DocumentError, match=message):
        parse_file(name, data)


def test_corrupt_pdf():
    truncated = make_pdf(["Some page text " * 50, "More text"])[:400]
    with pytest.raises(DocumentError, match="corrupt|no text"):
        parse_file("truncated.pdf", truncated)


def test_encrypted_pdf():
    with pytest.raises(DocumentError, match="password-protected"):
        parse_file("secret.pdf", encrypted_pdf())


def test_pdf_without_text():
    pdf = FPDF()
    pdf.add_page()
    with pytest.raises(DocumentError, match="no text could be extracted"):
        parse_file("scan.pdf", bytes(pdf.output()))


def test_corrupt_docx():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "not a word document")
    with pytest.raises(DocumentError, match="DOCX"):
        parse_file("broken.docx", buffer.getvalue())


def test_oversized_file_is_refused_before_parsing():
    with pytest.raises(DocumentError, match="over the 1 MB upload limit"):
        parse_file("big.txt", b"a" * (1024 * 1024 + 1), max_bytes=1024 * 1024)
