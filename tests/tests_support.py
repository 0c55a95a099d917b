"""Shared by several test modules: builders for real test files (PDF, DOCX), and a whole-answer check."""

from __future__ import annotations

import io

import docx
from fpdf import FPDF

from engine.answering.verifier import Verification, endorsed_names, recommended_name, verify_sentence


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def make_docx(title: str, paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    document = docx.Document()
    document.add_heading(title, level=1)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for row, values in zip(grid.rows, table):
            for cell, value in zip(row.cells, values):
                cell.text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def verify_answer(text: str, decision, candidates, known_source_ids: set[str]) -> Verification:
    """A whole composed or hand-written answer: every check the chat applies to one explanation sentence, and it
    must present the decision's model (or none), as the composed answer always does."""
    checked = verify_sentence(text, decision, candidates, known_source_ids)
    names = sorted({c.name for c in candidates}, key=len, reverse=True)
    endorsed = endorsed_names(text, names)
    recommended = endorsed[0] if endorsed else recommended_name(text, names)
    expected = decision.recommended.name if decision.recommended else None
    problems = list(checked.problems)
    if expected and recommended != expected:
        problems.append(f"it must recommend {expected}, the candidate the rules chose")
    elif not expected and endorsed:
        problems.append(f"no candidate may be recommended here, yet it recommends {endorsed[0]}")
    if not text.strip():
        problems.append("it is empty")
    return Verification(not problems, tuple(problems), recommended, checked.numbers_checked, checked.markers)
