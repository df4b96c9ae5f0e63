"""Why a document cannot become knowledge. Each maps to one HTTP status through its `code`."""

from __future__ import annotations

from orchestrator.errors import DuetError, Invalid


class UnsupportedDocument(DuetError):
    """Not a type the knowledge base reads (txt, md, html, pdf), or a file of such a type that does not decode
    (a "PDF" that is not one, an encrypted PDF, binary bytes sent as text)."""

    code = "unsupported_media_type"
    fatal = False


class EmptyDocument(Invalid):
    """A document with no text to search: an empty file, a scanned PDF without a text layer, HTML of only
    scripts. `field` is the request's JSON path to blame: "$.file" for an upload, "$.text" for JSON text."""

    def __init__(self, message: str, field: str = "$.file") -> None:
        super().__init__(message, field)


class DocumentTooLarge(DuetError):
    """Over a limit of `orchestrator.knowledge.parse`: bytes, PDF pages or characters of text."""

    code = "too_large"
    fatal = False
