"""Turning an uploaded file into text sections, each with the source id its chunks will cite.

PDFs keep their page numbers (one section per page, `doc:<file>:page-<n>`); other formats are one section.
Markdown may open with YAML front matter (title, source_id, url, kind) so curated documents cite a stable id.
Every way a file can be unusable raises `DocumentError` with a sentence a user can act on.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePath, PurePosixPath

from engine.core.yaml_input import YamlError, load_yaml
from engine.knowledge.sources import Source, SourceError, slug

SUPPORTED_SUFFIXES = (".pdf", ".docx", ".txt", ".md", ".markdown", ".html", ".htm")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.DOTALL)
# A DOCX is a ZIP that python-docx reads whole into memory: bound what it unpacks before it opens it.
MAX_DOCX_PARTS = 2_000  # a Word file has a few dozen parts, one more per embedded image
MAX_DOCX_UNPACKED = 256 * 1024 * 1024  # bytes, all parts together
MAX_DOCX_RATIO = 100  # how many times larger a part may unpack (Word's XML: about 10; a ZIP bomb: about 1,000)
MAX_PDF_PAGES = 5_000  # every page's text is extracted, and a page can be a few bytes


class DocumentError(ValueError):
    """The file cannot be ingested; the message says why in the user's terms."""


@dataclass(frozen=True)
class Section:
    text: str
    source: Source


@dataclass
class ParsedDocument:
    title: str
    origin: str
    sha256: str
    sections: list[Section]
    metadata: dict = field(default_factory=dict)


def parse_file(name: str, data: bytes, *, max_bytes: int | None = None) -> ParsedDocument:
    """Parse one file, named by its name or by its path inside an ingested folder ('team/README.md'), which makes its
    origin and source id; raises DocumentError for empty, oversized, corrupt, encrypted or disguised files."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentError(f"unsupported file type '{suffix or 'none'}' (supported: {', '.join(SUPPORTED_SUFFIXES)})")
    if max_bytes is not None and len(data) > max_bytes:
        raise DocumentError(f"file is {len(data) / 1048576:.1f} MB, over the {max_bytes / 1048576:.0f} MB upload limit")
    if not data.strip():
        raise DocumentError("file is empty")
    file_slug = "/".join(slug(part) for part in PurePosixPath(name).parts)
    parser = {".pdf": _parse_pdf, ".docx": _parse_docx, ".html": _parse_html, ".htm": _parse_html}.get(suffix, _parse_text)
    title, sections, metadata = parser(data, file_slug, PurePath(name).stem)
    sections = [section for section in sections if section.text.strip()]
    if not sections:
        raise DocumentError("no text could be extracted (a scanned PDF needs OCR first)" if suffix == ".pdf" else "file holds no text")
    return ParsedDocument(
        title=title,
        origin=f"file:{name}",
        sha256=hashlib.sha256(data).hexdigest(),
        sections=sections,
        metadata={"format": suffix.lstrip("."), "bytes": len(data), **metadata},
    )


def decode_text(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode UTF-8 (BOM optional), UTF-16 with a BOM, or an encoding the file itself declares (HTML meta charset).

    Anything else is refused rather than guessed: a wrong guess (Latin-1 read as cp1250) would put garbled
    text into the knowledge base and, through training, into the model.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as error:
            raise DocumentError(f"file claims UTF-16 (byte order mark) but byte {error.start} is invalid") from None
    if _looks_binary(data):
        raise DocumentError("file contains binary data, not text (an image or archive renamed to a text extension?)")
    for encoding in dict.fromkeys(filter(None, [declared, "utf-8-sig"])):
        try:
            return data.decode(encoding), "utf-8" if encoding == "utf-8-sig" else encoding
        except (UnicodeDecodeError, LookupError):
            continue
    error = _first_utf8_error(data)
    raise DocumentError(
        f"text is not valid UTF-8 (byte 0x{data[error]:02x} at position {error}); it is probably in a legacy "
        "encoding such as Latin-1 or Windows-1252: save it as UTF-8 and upload again"
    )


def _first_utf8_error(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start
    return 0


def _looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for byte in sample if byte < 32 and byte not in (9, 10, 12, 13))
    return control / max(len(sample), 1) > 0.05


def _parse_text(data: bytes, file_slug: str, stem: str):
    text, encoding = decode_text(data)
    metadata = {"encoding": encoding}
    front = _FRONT_MATTER.match(text)
    title, source_id, url, kind = None, f"doc:{file_slug}", None, "document"
    if front:
        try:
            fields = load_yaml(front.group(1)) or {}
        except YamlError as error:
            raise DocumentError(f"front matter: {error}") from None
        if not isinstance(fields, dict):
            raise DocumentError("front matter must be a mapping of keys to values")
        text = text[front.end():]
        title = fields.pop("title", None)
        source_id = fields.pop("source_id", source_id)
        url = fields.pop("url", None)
        kind = fields.pop("kind", kind)
        metadata.update({key: str(value) for key, value in fields.items()})
    heading = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    title = str(title or (heading.group(1).strip() if heading else stem))
    return title, [Section(text.strip(), _source(source_id, title, url, kind))], metadata


def _parse_html(data: bytes, file_slug: str, stem: str):
    from bs4 import BeautifulSoup

    declared = re.search(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", data[:4096], re.IGNORECASE)
    text, encoding = decode_text(data, declared.group(1).decode("ascii") if declared else None)
    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title and soup.title.get_text(strip=True) else stem
    body = soup.body or soup
    _mark_structure(body)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in body.get_text("").splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return title, [Section(text, _source(f"doc:{file_slug}", title, None, "document"))], {"encoding": encoding}


_BLOCKS = ("p", "div", "section", "article", "header", "footer", "main", "aside", "blockquote", "pre", "dd", "dt", "ul", "ol",
           "dl", "figure", "figcaption", "br", "hr")


def _mark_structure(body) -> None:
    """Keep what the page's structure says in its text, as Markdown: a table row becomes `| a | b |` (under a header
    rule), a list item `- item` (or `1. item`), a heading `# title`; block elements end their line, inline ones
    (<b>must</b>) stay in their sentence."""
    for table in body.find_all("table"):
        rows = []
        for index, row in enumerate(table.find_all("tr")):
            cells = [cell.get_text(" ", strip=True).replace("|", "/") for cell in row.find_all(["td", "th"])]
            rows.append("| " + " | ".join(cells) + " |")
            if index == 0:
                rows.append("|" + "---|" * len(cells))
        table.replace_with("\n\n" + "\n".join(rows) + "\n\n")
    for level in range(1, 7):
        for heading in body.find_all(f"h{level}"):
            heading.insert(0, "\n\n" + "#" * level + " ")
            heading.append("\n\n")
    for item in body.find_all("li"):
        numbered = item.parent is not None and item.parent.name == "ol"
        item.insert(0, "\n" + (f"{len(item.find_previous_siblings('li')) + 1}. " if numbered else "- "))
        item.append("\n")
    for block in body.find_all(_BLOCKS):
        block.append("\n\n" if block.name not in ("br",) else "\n")


def _parse_pdf(data: bytes, file_slug: str, stem: str):
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise DocumentError("not a PDF: the content does not start with %PDF (wrong extension?)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError("PDF is password-protected; remove the password and upload again")
        info = reader.metadata
        title = (info.title if info and info.title else None) or stem
        if len(reader.pages) > MAX_PDF_PAGES:
            raise DocumentError(f"PDF has {len(reader.pages):,} pages, more than the {MAX_PDF_PAGES:,} read from one file: split it")
        pages = [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    except FileNotDecryptedError:
        raise DocumentError("PDF is password-protected; remove the password and upload again") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as error:
        raise DocumentError(f"PDF is corrupt or truncated ({type(error).__name__}: {str(error)[:120]})") from None
    sections = [
        Section(text, _source(f"doc:{file_slug}:page-{number}", f"{title}, page {number}", None, "document"))
        for number, text in enumerate(pages, start=1)
    ]
    return title, sections, {"pages": len(pages)}


def _parse_docx(data: bytes, file_slug: str, stem: str):
    import docx

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DocumentError("not a DOCX: the content is not a ZIP container (wrong extension, or an old .doc file?)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_docx_parts(archive.infolist())
        document = docx.Document(io.BytesIO(data))
    except DocumentError:
        raise
    except (KeyError, ValueError, zipfile.BadZipFile, OSError) as error:
        raise DocumentError(f"DOCX is corrupt or not a Word document ({str(error)[:120]})") from None
    except Exception as error:  # python-docx raises library-specific errors (e.g. PackageNotFoundError, lxml errors)
        raise DocumentError(f"DOCX could not be read ({type(error).__name__}: {str(error)[:120]})") from None
    blocks = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            blocks.append(" | ".join(cell.text.strip() for cell in row.cells))
    title = document.core_properties.title or next(
        (p.text.strip() for p in document.paragraphs if p.style.name.startswith(("Title", "Heading")) and p.text.strip()), stem
    )
    text = "\n".join(blocks).strip()
    return title, [Section(text, _source(f"doc:{file_slug}", title, None, "document"))], {}


def _check_docx_parts(parts: list[zipfile.ZipInfo]) -> None:
    """Refuse a ZIP bomb from its directory (zipfile never unpacks more than a part's declared size)."""
    if len(parts) > MAX_DOCX_PARTS:
        raise DocumentError(f"DOCX has {len(parts):,} parts, more than the {MAX_DOCX_PARTS:,} a Word document may have")
    unpacked = sum(part.file_size for part in parts)
    if unpacked > MAX_DOCX_UNPACKED:
        raise DocumentError(f"DOCX unpacks to {unpacked / 1048576:,.0f} MB, more than {MAX_DOCX_UNPACKED / 1048576:.0f} MB")
    for part in parts:
        if part.file_size > 1048576 and part.file_size > MAX_DOCX_RATIO * part.compress_size:
            raise DocumentError(f"DOCX part {part.filename[:80]} unpacks {part.file_size / max(part.compress_size, 1):,.0f} times "
                                f"larger than it is stored (more than {MAX_DOCX_RATIO}: a ZIP bomb?)")


def _source(source_id: str, display_name: str, url: str | None, kind: str) -> Source:
    try:
        return Source(source_id=str(source_id), display_name=display_name, url=url, kind=str(kind))
    except SourceError as error:
        raise DocumentError(f"front matter: {error}") from None
