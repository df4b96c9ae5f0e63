"""Documents to text sections: plain text, Markdown, HTML and PDF, each as a list of `Section`s.

A `Section` is the text under one heading, with the path of headings above it ("Billing", "Late fees").
Its paragraphs are separated by a blank line; the lines of one paragraph (list items, table rows) by "\\n".
The chunker (`orchestrator.knowledge.chunk`) packs paragraphs into chunks and never needs the format again.

* **Markdown**: `#` and underlined (`===`, `---`) headings; fenced code kept as text; links, images, emphasis and
  inline HTML reduced to their words; a table row becomes "Header: cell; Header: cell".
* **HTML** (stdlib `html.parser`): h1-h6 are headings; `script`, `style`, `nav`, `head`, ... are dropped;
  paragraphs, list items (one line each) and table rows (as in Markdown) are kept.
* **PDF** (`pypdf`, text layer only: a scan without one is empty): the text of each page, then as plain text,
  with the line breaks of the page layout joined back into paragraphs, page numbers and running headers
  dropped.
* **Plain text**: paragraphs are split on blank lines; a heading is a short line that does not end a
  sentence (no full stop) standing alone above a paragraph, or an ALL-CAPS / Title Case / numbered line
  ("3.2 Refunds") at the top of one. ALL-CAPS headings rank above the others when a document has both.

The type comes from the magic bytes (`%PDF-`), then the content type, then the file name's extension, then a
look at the text. Limits (`MAX_BYTES`, `MAX_PAGES`, `MAX_CHARS`) bound the work one upload can cause.
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Literal

from orchestrator.knowledge.errors import DocumentTooLarge, EmptyDocument, UnsupportedDocument

MAX_BYTES = 10 * 1024 * 1024  # one uploaded file
MAX_PAGES = 2000  # one PDF
MAX_CHARS = 2_000_000  # text of one document after extraction (~350k words)

Kind = Literal["text", "markdown", "html", "pdf"]

_CONTENT_TYPES: dict[str, Kind] = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
}
# Formats people upload that are not read (yet); other unknown names are looked at: binary is refused then.
_OTHER_FORMATS = frozenset({".doc", ".docx", ".odt", ".rtf", ".pptx", ".xlsx", ".xls", ".epub", ".png", ".jpg", ".zip"})
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/unknown"})
_EXTENSIONS: dict[str, Kind] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
}


@dataclass(frozen=True)
class Section:
    heading_path: tuple[str, ...]  # outermost heading first; () = text before the first heading
    text: str  # paragraphs separated by "\n\n", lines of a paragraph by "\n"


@dataclass(frozen=True)
class ParsedDocument:
    kind: Kind
    sections: tuple[Section, ...]
    pages: int = 0  # pages of a PDF; 0 for the other kinds

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


def parse_document(data: bytes, *, filename: str = "", content_type: str = "", field: str = "$.file") -> ParsedDocument:
    """Sections of a document. `field` is the request path an `EmptyDocument` names ("$.text" for JSON text).

    Raises `UnsupportedDocument`, `EmptyDocument`, `DocumentTooLarge`."""
    if len(data) > MAX_BYTES:
        raise DocumentTooLarge(f"the document is {len(data)} bytes; the limit is {MAX_BYTES}")
    if not data.strip():
        raise EmptyDocument("the document is empty", field)
    kind = detect_kind(data, filename=filename, content_type=content_type)
    pages = 0
    if kind == "pdf":
        page_texts = _pdf_pages(data)
        pages = len(page_texts)
        sections = _plain_sections(_drop_page_furniture(page_texts), wrapped=True)
    else:
        text = _decode(data)
        if len(text) > MAX_CHARS:
            raise DocumentTooLarge(f"the document has {len(text)} characters of text; the limit is {MAX_CHARS}")
        if kind == "markdown":
            sections = _markdown_sections(text)
        elif kind == "html":
            sections = _html_sections(text)
        else:
            sections = _plain_sections([text], wrapped=False)
    if not sections:
        what = "PDF has no text layer (a scan?)" if kind == "pdf" else f"{kind} document has no text"
        raise EmptyDocument(f"the {what}", field)
    return ParsedDocument(kind=kind, sections=tuple(sections), pages=pages)


def detect_kind(data: bytes, *, filename: str = "", content_type: str = "") -> Kind:
    """The document's type: magic bytes first (a PDF is a PDF whatever its name), then the declared content
    type, then the extension, then a look at the text."""
    if b"%PDF-" in data[:1024]:  # the header may follow a little junk
        return "pdf"
    ctype = content_type.split(";", 1)[0].strip().lower()
    ext = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if ctype in _CONTENT_TYPES:
        kind = _CONTENT_TYPES[ctype]
        if kind == "text" and _EXTENSIONS.get(ext) == "markdown":  # Markdown is often sent as text/plain
            return "markdown"
        return kind
    if ctype not in _GENERIC_TYPES:
        raise UnsupportedDocument(f"documents of type {ctype!r} are not supported (txt, md, html or pdf)")
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if ext in _OTHER_FORMATS:
        raise UnsupportedDocument(f"{ext} files are not supported (txt, md, html or pdf)")
    text = _decode(data[:65536], partial=True)
    if re.match(r"\s*(<!doctype\s+html|<html|<head|<body)", text, re.I):
        return "html"
    if re.search(r"(?m)^#{1,6}[ \t]+\S", text):
        return "markdown"
    return "text"


# ------------------------------------------------------------------------------------------------ text input


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def _decode(data: bytes, *, partial: bool = False) -> str:
    """UTF-8 (or UTF-16 with a BOM; Windows-1252 as a fallback) with line ends and odd spaces normalised.
    Binary data is refused: a NUL, or more than 1% control characters."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            # a sniff may cut a character in two at its end
            if partial and exc.start >= len(data) - 3:
                text = data[: exc.start].decode("utf-8-sig", errors="replace")
            else:
                text = data.decode("cp1252", errors="replace")
    if "\x00" in text or len(_CONTROL.findall(text)) > len(text) / 100:
        raise UnsupportedDocument("the document is binary, not text (txt, md, html or pdf)")
    return _normalise(text)


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = text.replace("\t", "    ").replace("\u00a0", " ").replace("\u00ad", "")
    return re.sub(r"[\u200b-\u200d\ufeff]", "", _CONTROL.sub("", text))


def _clean(text: str) -> str:
    """Whitespace of a line collapsed."""
    return re.sub(r"[ \t\u00a0\u2000-\u200a\u3000]+", " ", text).strip()


class _Sections:
    """Collects paragraphs under the current heading path."""

    def __init__(self) -> None:
        self._path: list[tuple[int, str]] = []  # (level, title)
        self._paragraphs: list[str] = []
        self.sections: list[Section] = []

    def heading(self, level: int, title: str) -> None:
        title = _clean(title).rstrip(":").strip()
        if not title:
            return
        self.flush()
        while self._path and self._path[-1][0] >= level:
            self._path.pop()
        self._path.append((level, title))

    def paragraph(self, lines: Iterable[str]) -> None:
        kept = [c for c in (_clean(line) for line in lines) if c]
        if kept:
            self._paragraphs.append("\n".join(kept))

    def flush(self) -> None:
        if self._paragraphs:
            path = tuple(title for _, title in self._path)
            self.sections.append(Section(path, "\n\n".join(self._paragraphs)))
        self._paragraphs = []


def _table_lines(rows: Sequence[Sequence[str]], header: Sequence[str] | None) -> list[str]:
    """One line per row; with a header row, "Header: cell; Header: cell" (a cell says what it is)."""
    lines = []
    for row in rows:
        cells = [_clean(c) for c in row]
        if header and len(header) == len(cells):
            pairs = [f"{h}: {c}" if h else c for h, c in zip(header, cells, strict=True) if c]
            lines.append("; ".join(pairs))
        else:
            lines.append(" | ".join(c for c in cells if c))
    return [line for line in lines if line]


# ---------------------------------------------------------------------------------------------------- Markdown


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*#*[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_BULLET = re.compile(r"^\s*(?:[-*+•◦▪‣]|\d{1,3}[.)])\s+")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_LINK_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s+\S")
_INLINE = (
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # image: its alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # link: its words
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # reference link
    (re.compile(r"<(https?://[^>\s]+|[^>\s@]+@[^>\s]+)>"), r"\1"),  # autolink
    (re.compile(r"</?[A-Za-z][^>]*>"), ""),  # inline HTML tags
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),  # bold
    (re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])"), r"\1"),  # italic
    (re.compile(r"(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])"), r"\1"),
    (re.compile(r"~~(.+?)~~"), r"\1"),
    (re.compile(r"`+([^`]*)`+"), r"\1"),  # inline code
    (re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~])"), r"\1"),  # escapes
)


def _inline(text: str) -> str:
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return text


def _cells(line: str) -> list[str]:
    line = line.strip()
    line = line.removeprefix("|")
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [_inline(c.strip()) for c in re.split(r"(?<!\\)\|", line)]


def _markdown_sections(text: str) -> list[Section]:
    out = _Sections()
    lines = text.split("\n")
    para: list[str] = []  # logical lines of the current paragraph

    def end_paragraph() -> None:
        out.paragraph(para)
        para.clear()

    i = 0
    fence = ""
    while i < len(lines):
        line = lines[i]
        i += 1
        if fence:
            if line.strip().startswith(fence):
                fence = ""
                end_paragraph()
            else:
                para.append(line)
            continue
        m = _FENCE.match(line)
        if m:
            end_paragraph()
            fence = m.group(1)
            continue
        stripped = line.strip()
        if not stripped or _RULE.match(line):  # (an underlined heading's rule was read with its title)
            end_paragraph()
            continue
        m = _ATX.match(line)
        if m:
            end_paragraph()
            out.heading(len(m.group(1)), _inline(m.group(2) or ""))
            continue
        if not para and i < len(lines) and _SETEXT.match(lines[i]) and not _BULLET.match(line):
            out.heading(1 if lines[i].strip().startswith("=") else 2, _inline(stripped))
            i += 1
            continue
        if _LINK_DEF.match(line):
            continue
        if "|" in stripped and i < len(lines) and _TABLE_RULE.match(lines[i]):
            end_paragraph()
            header = _cells(stripped)
            i += 1
            rows = []
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_cells(lines[i]))
                i += 1
            out.paragraph(_table_lines(rows, header))
            continue
        stripped = re.sub(r"^(>\s?)+", "", stripped)  # block quote
        bullet = _BULLET.match(stripped)
        if bullet:
            para.append(_inline(stripped[bullet.end() :]))
        elif para:
            para[-1] = f"{para[-1]} {_inline(stripped)}"  # a wrapped line, or a list item's continuation
        else:
            para.append(_inline(stripped))
    end_paragraph()
    out.flush()
    return out.sections


# -------------------------------------------------------------------------------------------------------- HTML

# Dropped with everything inside: code, styling, navigation and widgets are not knowledge.
_SKIP = frozenset(
    {"script", "style", "nav", "noscript", "template", "head", "svg", "iframe", "canvas", "select", "button"}
)
# End the current paragraph.
_BLOCKS = frozenset(
    {
        "p", "div", "section", "article", "main", "aside", "header", "footer", "blockquote", "pre", "figure",
        "figcaption", "address", "dl", "ul", "ol", "form", "fieldset", "legend", "details", "summary", "hr",
        "center", "body",
    }
)  # fmt: skip
# End the current line of a paragraph (a list is one paragraph, one line per item).
_LINES = frozenset({"li", "dt", "dd", "br", "tr"})
_VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"})


@dataclass
class _Table:
    rows: list[list[str]] = field(default_factory=list)
    header: list[str] | None = None
    row: list[str] = field(default_factory=list)
    row_all_th: bool = True  # a first row of <th> cells is the header
    cell: list[str] | None = None  # text of the open cell

    def end_cell(self) -> None:
        if self.cell is not None:
            self.row.append(_clean(" ".join("".join(self.cell).split())))
            self.cell = None

    def end_row(self) -> None:
        self.end_cell()
        if any(self.row):
            if self.row_all_th and self.header is None and not self.rows:
                self.header = self.row
            else:
                self.rows.append(self.row)
        self.row = []
        self.row_all_th = True


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = _Sections()
        self._skip: list[str] = []  # open skipped elements
        self._pre = 0
        self._heading = 0  # level of the open h1-h6, 0 = none
        self._buf: list[str] = []  # text of the current line (or heading)
        self._lines: list[str] = []  # lines of the current paragraph
        self._tables: list[_Table] = []  # open tables, innermost last

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP and tag not in _VOID:
            self._skip.append(tag)
        if self._skip:
            return
        table = self._tables[-1] if self._tables else None
        if table is not None:
            if tag in {"td", "th"}:
                table.end_cell()
                table.row_all_th &= tag == "th"
                table.cell = []
            elif tag == "tr":
                table.end_row()
            elif tag == "table":
                self._tables.append(_Table())
            elif tag in _LINES and table.cell is not None:
                table.cell.append(" ")
            return
        if re.fullmatch(r"h[1-6]", tag):
            self._end_paragraph()
            self._heading = int(tag[1])
        elif tag == "table":
            self._end_paragraph()
            self._tables.append(_Table())
        elif tag in _BLOCKS:
            self._end_paragraph()
        elif tag in _LINES:
            self._end_line()
        if tag == "pre":
            self._pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _LINES | _BLOCKS:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if self._tables:
            table = self._tables[-1]
            if tag in {"td", "th"}:
                table.end_cell()
            elif tag == "tr":
                table.end_row()
            elif tag == "table":
                self._end_table()
            return
        if re.fullmatch(r"h[1-6]", tag) and self._heading:
            title = "".join(self._buf)
            self._buf.clear()
            self.out.heading(self._heading, title)
            self._heading = 0
        elif tag in _BLOCKS:
            self._end_paragraph()
        elif tag in _LINES:
            self._end_line()
        if tag == "pre":
            self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._tables:
            cell = self._tables[-1].cell
            if cell is not None:
                cell.append(data)
        elif self._pre and not self._heading:
            first, *rest = data.split("\n")
            self._buf.append(first)
            for part in rest:
                self._end_line()
                self._buf.append(part)
        else:
            self._buf.append(data)

    def _end_table(self) -> None:
        table = self._tables.pop()
        table.end_row()
        lines = _table_lines(table.rows, table.header)
        if self._tables:  # a table in a table: its rows become the outer cell's text
            outer = self._tables[-1]
            if outer.cell is not None:
                outer.cell.append(" " + " ".join(lines) + " ")
        else:
            self.out.paragraph(lines)

    def _end_line(self) -> None:
        if self._heading:
            return
        line = _clean(" ".join("".join(self._buf).split()))
        self._buf.clear()
        if line:
            self._lines.append(line)

    def _end_paragraph(self) -> None:
        self._end_line()
        self.out.paragraph(self._lines)
        self._lines.clear()

    def close(self) -> None:
        super().close()
        while self._tables:
            self._end_table()
        if self._heading:  # an unclosed heading
            self.handle_endtag(f"h{self._heading}")
        self._end_paragraph()
        self.out.flush()


def _html_sections(text: str) -> list[Section]:
    parser = _Html()
    parser.feed(text)
    parser.close()
    return parser.out.sections


# --------------------------------------------------------------------------------------------------------- PDF


def _pdf_pages(data: bytes) -> list[str]:
    """The text of each page, in reading order as pypdf gives it."""
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # a malformed file's warnings are not ours to log
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnsupportedDocument("the PDF is encrypted")
        pages = reader.pages
        count = len(pages)
    except UnsupportedDocument:
        raise
    except Exception as exc:  # pypdf raises many kinds (PdfReadError, ValueError, KeyError...) on bad input
        raise UnsupportedDocument("the file is not a readable PDF") from exc
    if count > MAX_PAGES:
        raise DocumentTooLarge(f"the PDF has {count} pages; the limit is {MAX_PAGES}")
    texts: list[str] = []
    failed = 0
    total = 0
    for page in pages:
        try:
            text = page.extract_text() or ""
        except Exception:  # one broken page does not lose the others
            failed += 1
            text = ""
        total += len(text)
        if total > MAX_CHARS:
            raise DocumentTooLarge(f"the PDF has over {MAX_CHARS} characters of text; that is the limit")
        texts.append(_normalise(text))
    if count and failed == count:
        raise UnsupportedDocument("the file is not a readable PDF (no page could be read)")
    return texts


_PAGE_NUMBER = re.compile(r"^\s*(page\s+)?[-–(]?\s*\d{1,4}\s*[-–)]?(\s*(of|/)\s*\d{1,4})?\s*$", re.I)


def _drop_page_furniture(pages: list[str]) -> list[str]:
    """Page numbers, and running headers and footers: among the first and last two lines of each page, those
    that are a page number, and those repeated (numbers aside) on most pages that do not end a sentence."""

    def key(line: str) -> str:
        return re.sub(r"\d+", "#", line.strip().lower())

    split = [page.split("\n") for page in pages]
    edges = []
    for lines in split:
        filled = [i for i, line in enumerate(lines) if line.strip()]
        edges.append(set(filled[:2] + filled[-2:]))
    counts = Counter(k for lines, edge in zip(split, edges, strict=True) for k in {key(lines[i]) for i in edge})
    running = {k for k, n in counts.items() if len(split) >= 3 and n > len(split) / 2}

    def furniture(line: str) -> bool:
        return bool(_PAGE_NUMBER.match(line)) or (key(line) in running and not line.rstrip().endswith("."))

    return [
        "\n".join(line for i, line in enumerate(lines) if not (i in edge and furniture(line)))
        for lines, edge in zip(split, edges, strict=True)
    ]


# -------------------------------------------------------------------------------------------------- plain text

_NUMBERED = re.compile(r"^(\d{1,2}(?:\.\d{1,2})*)\.?\s+\S")
_SMALL_WORDS = frozenset(
    "a an and as at but by for from if in into is it of on or per the to via vs with your you our we".split()
)


def _is_caps(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    return len(letters) >= 3 and all(c.isupper() for c in letters)


def _is_title_case(line: str) -> bool:
    words = [w for w in re.findall(r"[A-Za-z][\w'’-]*", line) if w.lower() not in _SMALL_WORDS]
    return bool(words) and line.lstrip()[:1].isupper() and sum(w[0].isupper() for w in words) >= 0.75 * len(words)


def _heading_like(line: str, *, alone: bool) -> bool:
    """A line that could be a heading: short, no sentence end, and starting like one. A line standing alone
    (blank lines around it) may be in sentence case; one above a paragraph must look like a title."""
    line = line.strip()
    words = line.split()
    if not 1 <= len(words) <= 12 or len(line) > 90 or (_BULLET.match(line) and not _NUMBERED.match(line)):
        return False
    if not (line[0].isupper() or line[0].isdigit()) or line.endswith((".", ",", ";")):
        return False
    if line.endswith(("?", ":", "!")) and not alone:
        return False
    if re.search(r"[.!?]\s+[A-Z]", line):  # two sentences on one line
        return False
    if _NUMBERED.match(line):
        rest = line[_NUMBERED.match(line).end() - 1 :]  # type: ignore[union-attr]
        return _is_title_case(rest) or _is_caps(rest) or alone
    return alone or _is_caps(line) or _is_title_case(line)


def _heading_level(line: str, caps_rank_first: bool) -> int:
    numbered = _NUMBERED.match(line.strip())
    if numbered:
        return numbered.group(1).count(".") + 1
    if _is_caps(line) or not caps_rank_first:
        return 1
    return 2


def _plain_sections(pages: list[str], *, wrapped: bool) -> list[Section]:
    """Paragraphs and headings of plain text. `wrapped`: the line breaks are a page layout's (PDF), so a
    paragraph also ends at a line that ends a sentence well short of the page's width."""
    blocks: list[list[str]] = []
    for page in pages:
        block: list[str] = []
        for raw in page.split("\n"):
            line = _clean(raw)
            if not line or (_SETEXT.match(line) and not block):
                if block:
                    blocks.append(block)
                block = []
            else:
                block.append(line)
        if block:
            blocks.append(block)
    if wrapped:
        blocks = [part for block in blocks for part in _split_wrapped(block)]

    def candidates() -> Iterable[tuple[str, bool]]:
        for block in blocks:
            yield block[0], len(block) == 1

    caps_rank_first = any(_is_caps(line) and _heading_like(line, alone=alone) for line, alone in candidates())

    out = _Sections()
    for n, block in enumerate(blocks):
        lines = list(block)
        more_follows = n + 1 < len(blocks)
        if len(lines) >= 2 and _SETEXT.match(lines[1]) and len(lines[0].split()) <= 12:  # underlined heading
            out.heading(1 if lines[1].startswith("=") else 2, lines[0])
            lines = lines[2:]
        elif _heading_on_top(lines, more_follows):
            out.heading(_heading_level(lines[0], caps_rank_first), lines[0].rstrip(":"))
            lines = lines[1:]
        logical: list[str] = []
        for line in lines:
            bullet = _BULLET.match(line)
            if bullet:
                logical.append(line[bullet.end() :])
            elif logical and logical[-1].endswith("-") and line[:1].islower():
                logical[-1] = logical[-1][:-1] + line  # a word hyphenated across lines
            elif logical:
                logical[-1] = f"{logical[-1]} {line}"
            else:
                logical.append(line)
        out.paragraph(logical)
    out.flush()
    return out.sections


def _heading_on_top(lines: list[str], more_follows: bool) -> bool:
    """Whether a block's first line is a heading: alone in its block (with more text after it), a title above
    a paragraph, or a line in sentence case well shorter than the paragraph under it ("Late fees")."""
    if len(lines) == 1:
        return more_follows and _heading_like(lines[0], alone=True)
    if _heading_like(lines[0], alone=False):
        return True
    under = max(len(line) for line in lines[1:])
    return len(lines[0]) <= 0.6 * under and lines[1][:1].isupper() and _heading_like(lines[0], alone=True)


def _split_wrapped(block: list[str]) -> list[list[str]]:
    """A block of layout lines cut into paragraphs: after a line ending a sentence well short of the widest
    line; a title-like line after a sentence end (or after another heading) is a block of its own."""
    width = max(len(line) for line in block)
    ends = (".", "!", "?", ":")
    parts: list[list[str]] = []
    current: list[str] = []
    after_heading = False
    for i, line in enumerate(block):
        following = block[i + 1] if i + 1 < len(block) else ""
        at_break = not current or current[-1].endswith(ends) or after_heading
        if at_break and following and _heading_like(line, alone=False) and not following[:1].islower():
            if current:
                parts.append(current)
            parts.append([line])
            current = []
            after_heading = True
            continue
        after_heading = False
        current.append(line)
        if line.endswith(ends) and len(line) < 0.8 * width and following:
            parts.append(current)
            current = []
    if current:
        parts.append(current)
    return parts
