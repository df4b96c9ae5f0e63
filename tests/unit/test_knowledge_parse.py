"""Documents to sections (orchestrator/knowledge/parse.py): each format, type detection, limits, typed errors."""

from __future__ import annotations

import pytest

from orchestrator.errors import DuetError, Invalid
from orchestrator.knowledge import parse
from orchestrator.knowledge.errors import DocumentTooLarge, EmptyDocument, UnsupportedDocument
from orchestrator.knowledge.parse import Section, detect_kind, parse_document
from perf.bench_knowledge import text_pdf


def paths(doc: parse.ParsedDocument) -> list[tuple[str, ...]]:
    return [s.heading_path for s in doc.sections]


def section(doc: parse.ParsedDocument, *path: str) -> Section:
    return next(s for s in doc.sections if s.heading_path == path)


# ------------------------------------------------------------------------------------------------ plain text

PLAIN = """ACME CLINIC POLICIES

Welcome to Acme. These policies apply to every visit.

APPOINTMENTS

Booking a Visit
Call us or use the portal. We answer calls from 8 a.m.

Late arrivals
If you are more than 10 minutes late, we may reschedule.
Call ahead if you
are running late.

- Bring your card
- Bring your ID
"""


def test_plain_text_headings_paragraphs_and_lists() -> None:
    doc = parse_document(PLAIN.encode(), filename="policies.txt")
    assert doc.kind == "text"
    assert paths(doc) == [
        ("ACME CLINIC POLICIES",),
        ("APPOINTMENTS", "Booking a Visit"),
        ("APPOINTMENTS", "Late arrivals"),
    ]
    late = section(doc, "APPOINTMENTS", "Late arrivals")
    # wrapped lines joined into one paragraph; list items one line each
    assert late.text == (
        "If you are more than 10 minutes late, we may reschedule. Call ahead if you are running late.\n\n"
        "Bring your card\nBring your ID"
    )


def test_plain_text_sentence_lines_are_not_headings() -> None:
    text = b"We open at nine.\n\nPlease call first.\nThanks for reading this far, everyone\n"
    doc = parse_document(text)
    assert paths(doc) == [()]
    assert "Please call first." in doc.text


def test_numbered_headings_nest() -> None:
    text = b"1 Billing\n\nWe bill monthly.\n\n1.1 Late Fees\nA fee of $5 applies.\n"
    doc = parse_document(text, filename="x.txt")
    assert paths(doc) == [("1 Billing",), ("1 Billing", "1.1 Late Fees")]


# -------------------------------------------------------------------------------------------------- Markdown

MARKDOWN = """# Billing

Intro with a [link](https://example.com), **bold**, *italic* and `code`.

## Late fees

A fee of $5 applies after 10 days.
It is added to the next bill.

* first item
* second item
  continued

```
# not a heading
```

Payment plans
-------------

| Plan | Months |
|------|--------|
| Small | 3 |
| Large | 12 |

### Deeper

Text.

# Other

Last.
"""


def test_markdown_structure() -> None:
    doc = parse_document(MARKDOWN.encode(), filename="billing.md")
    assert doc.kind == "markdown"
    assert paths(doc) == [
        ("Billing",),
        ("Billing", "Late fees"),
        ("Billing", "Payment plans"),
        ("Billing", "Payment plans", "Deeper"),
        ("Other",),
    ]
    assert section(doc, "Billing").text == "Intro with a link, bold, italic and code."
    late = section(doc, "Billing", "Late fees").text.split("\n\n")
    assert late[0] == "A fee of $5 applies after 10 days. It is added to the next bill."
    assert late[1] == "first item\nsecond item continued"
    assert late[2] == "# not a heading"  # fenced code is text, not a heading
    assert section(doc, "Billing", "Payment plans").text == "Plan: Small; Months: 3\nPlan: Large; Months: 12"


def test_markdown_rules_end_paragraphs() -> None:
    doc = parse_document(b"# T\n\nOne line\nanother line\n---\nAfter the rule.\n\n***\n", filename="x.md")
    assert section(doc, "T").text == "One line another line\n\nAfter the rule."


# ------------------------------------------------------------------------------------------------------ HTML

HTML = """<!doctype html><html><head><title>Ignored</title><style>p {color: red}</style></head>
<body>
<nav><a href="/">Home</a> <a href="/plans">Plans</a></nav>
<script>var secret = "do not index";</script>
<h1>Guide</h1>
<p>Intro &amp; more
   text.</p>
<h2>Paying</h2>
<ul><li>By card</li><li>By <b>cash</b> in store</li></ul>
<div>A div<br>with a break</div>
<h3>Fees</h3>
<table><tr><th>Fee</th><th>Amount</th></tr><tr><td>Late</td><td>$7</td></tr><tr><td>Restoral</td><td>$20</td></tr></table>
<h2>Contact</h2><p>Call 611.
<p>Unclosed paragraphs too.
<noscript>Enable JavaScript</noscript>
</body></html>"""


def test_html_drops_scripts_and_navigation_and_keeps_structure() -> None:
    doc = parse_document(HTML.encode(), content_type="text/html; charset=utf-8")
    assert doc.kind == "html"
    assert paths(doc) == [("Guide",), ("Guide", "Paying"), ("Guide", "Paying", "Fees"), ("Guide", "Contact")]
    assert "secret" not in doc.text and "Home" not in doc.text and "Ignored" not in doc.text
    assert "JavaScript" not in doc.text and "color" not in doc.text
    assert section(doc, "Guide").text == "Intro & more text."
    assert section(doc, "Guide", "Paying").text == "By card\nBy cash in store\n\nA div\nwith a break"
    assert section(doc, "Guide", "Paying", "Fees").text == "Fee: Late; Amount: $7\nFee: Restoral; Amount: $20"
    assert section(doc, "Guide", "Contact").text == "Call 611.\n\nUnclosed paragraphs too."


def test_html_table_without_header_row() -> None:
    doc = parse_document(b"<table><tr><td>a</td><td>b</td></tr></table>", filename="t.html")
    assert doc.text == "a | b"


# ------------------------------------------------------------------------------------------------------- PDF


def test_pdf_pages_headings_and_paragraphs() -> None:
    text = (
        "STAFF HANDBOOK\n\nYour First Day\nPlease arrive at 8:45 a.m. at reception. "
        + "Your manager will meet you there and show you around the building. " * 6
        + "\n\nParking\nStaff parking is in lot C.\n"
        + "\n".join(f"Line {i} of filler text that ends a sentence." for i in range(60))
    )
    data = text_pdf(text)
    doc = parse_document(data, filename="handbook.pdf")
    assert doc.kind == "pdf"
    assert doc.pages == 2
    assert ("STAFF HANDBOOK", "Your First Day") in paths(doc)
    first_day = section(doc, "STAFF HANDBOOK", "Your First Day").text
    assert first_day.startswith("Please arrive at 8:45 a.m. at reception. Your manager will meet you")
    assert "\n" not in first_day  # the page's wrapped lines are one paragraph again
    assert section(doc, "STAFF HANDBOOK", "Parking").text.startswith("Staff parking is in lot C.")


def test_pdf_detected_by_magic_bytes_whatever_the_name() -> None:
    assert detect_kind(text_pdf("Hello."), filename="notes.txt", content_type="text/plain") == "pdf"


def test_page_numbers_and_running_headers_are_dropped() -> None:
    pages = [f"Acme Handbook\nBody of page {n}.\nPage {n} of 3" for n in (1, 2, 3)]
    assert parse._drop_page_furniture(pages) == [f"Body of page {n}." for n in (1, 2, 3)]


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.4\nthis is not a pdf at all", b"%PDF-1.7\n" + bytes(range(256)) * 4],
)
def test_corrupt_pdf_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedDocument) as err:
        parse_document(data, filename="broken.pdf")
    assert err.value.code == "unsupported_media_type" and not err.value.fatal


def test_declared_pdf_without_pdf_bytes_is_unsupported() -> None:
    with pytest.raises(UnsupportedDocument):
        parse_document(b"plain words", content_type="application/pdf")


def test_pdf_without_text_is_empty() -> None:
    with pytest.raises(EmptyDocument, match="no text layer"):
        parse_document(text_pdf(""), filename="scan.pdf")


# -------------------------------------------------------------------------------------- detection and errors


@pytest.mark.parametrize(
    ("data", "filename", "content_type", "kind"),
    [
        (b"# Title\n\ntext", "", "", "markdown"),
        (b"<!DOCTYPE html><p>x</p>", "", "", "html"),
        (b"  <html><body>x</body></html>", "page", "application/octet-stream", "html"),
        (b"just words", "", "", "text"),
        (b"# Title", "notes.md", "text/plain", "markdown"),  # Markdown sent as text/plain
        (b"# Title", "notes.txt", "text/plain", "text"),
        (b"<p>x</p>", "page.HTM", "", "html"),
        (b"x", "", "text/markdown; charset=utf-8", "markdown"),
    ],
)
def test_detect_kind(data: bytes, filename: str, content_type: str, kind: str) -> None:
    assert detect_kind(data, filename=filename, content_type=content_type) == kind


@pytest.mark.parametrize(
    ("data", "filename", "content_type"),
    [
        (b"\x89PNG\r\n\x1a\n", "", "image/png"),
        (b"PK\x03\x04 word doc", "letter.docx", ""),
        (b"\x00\x01\x02binary\x00\x00", "", ""),
    ],
)
def test_unsupported_types(data: bytes, filename: str, content_type: str) -> None:
    with pytest.raises(UnsupportedDocument):
        parse_document(data, filename=filename, content_type=content_type)


@pytest.mark.parametrize(
    "data", [b"", b"   \n\t\n", b"<html><script>var a = 1;</script><style>p{}</style></html>", b"```\n```"]
)
def test_empty_documents(data: bytes) -> None:
    with pytest.raises(EmptyDocument) as err:
        parse_document(data, filename="x.html" if b"html" in data else "x.md")
    assert err.value.field == "$.file"
    assert err.value.code == "invalid" and not err.value.fatal
    assert isinstance(err.value, Invalid)  # the API maps it to 422 with its field


def test_empty_json_text_blames_the_text_field() -> None:
    with pytest.raises(EmptyDocument) as err:
        parse_document(b" ", field="$.text")
    assert err.value.field == "$.text"


def test_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DocumentTooLarge) as err:
        parse_document(b"x" * (parse.MAX_BYTES + 1))
    assert err.value.code == "too_large" and not err.value.fatal
    monkeypatch.setattr(parse, "MAX_CHARS", 10)
    with pytest.raises(DocumentTooLarge):
        parse_document(b"more than ten characters")


def test_errors_are_duet_errors() -> None:
    for cls in (UnsupportedDocument, EmptyDocument, DocumentTooLarge):
        assert issubclass(cls, DuetError)


def test_encodings() -> None:
    assert parse_document("café menu".encode("utf-16")).text == "café menu"
    assert parse_document("\ufeffcafé".encode()).text == "café"
    assert parse_document("naïve".encode("cp1252")).text == "naïve"  # not UTF-8: Windows-1252
    assert parse_document(b"a\r\nb\r\n\r\nc").text == "a b\n\nc"
