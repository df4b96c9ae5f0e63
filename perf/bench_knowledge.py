"""Knowledge retrieval benchmark: does search find the chunk that answers a caller's question, and how fast?

    .venv/bin/python perf/bench_knowledge.py                      # the served `embed` model (tritonserver here)
    .venv/bin/python perf/bench_knowledge.py --triton HOST:PORT   # ... of a running tritonserver
    .venv/bin/python perf/bench_knowledge.py --embedder local     # the same model in this process (tuning)

Data (perf/data/knowledge/, written for this benchmark; its README.md): three organisation documents
with headings, one per format (a clinic's patient policies in Markdown, a telecom's billing guide in HTML, an
employee handbook in plain text; the handbook is also turned into a PDF here, at run time, and indexed in
its place once), and `questions.jsonl`: questions worded the way a caller asks, unlike the documents' text,
each with an `answer` string that appears verbatim in the passage that answers it and a short `fact` a spoken
reply must contain; and questions the documents do not answer (`answerable: false`).

What is measured, on one tenant holding the three documents, then the same tenant padded to ~1,000 chunks
with generated text of other organisations (`distractor_documents`: templated policy text on other
subjects, in the same vocabulary of fees, days, requests and approvals, so that it is not trivially set
apart):
* **recall@1, recall@5, MRR@10** per index mode (orchestrator/knowledge/index.py): `keyword` (BM25 alone),
  `vector` (chunk cosine alone: the `speed` strategy), `rrf` (reciprocal-rank fusion of those two), `hybrid`
  (chunk and best-sentence cosines with a small keyword term: `balanced` and `quality`).
  A chunk is relevant when its text holds the question's `answer` (case and spacing aside), so the set works
  with any chunking; a question whose answer no chunk holds whole counts as a miss, and is listed.
* **latency** p50/p95 in ms: the query through `Retriever.search` (embedding it with the model included; none
  for `keyword`), and the index search alone.
* **unanswerable**: how well the top hit's similarity (its cosine; in keyword mode its score) tells the
  questions the documents answer from those they do not: the AUC (0.5 = not at all), and in the JSON the best
  single threshold and its accuracy.

Targets (balanced, padded tenant): recall@5 >= 0.9, recall@1 >= 0.7, p95 <= 50 ms. Markdown table on stdout,
JSON in perf/out/knowledge/. Scoring functions are pure and unit-tested (tests/unit/test_bench_knowledge.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.knowledge.chunk import Chunk, chunk_document  # noqa: E402
from orchestrator.knowledge.index import MODES, STRATEGY_MODES, KnowledgeIndex, Mode  # noqa: E402
from orchestrator.knowledge.parse import parse_document  # noqa: E402
from orchestrator.knowledge.retrieve import Retriever, embed_chunks  # noqa: E402
from orchestrator.models.ports import Embedder  # noqa: E402

DATA = ROOT / "perf" / "data" / "knowledge"
OUT = ROOT / "perf" / "out" / "knowledge"
DOCUMENTS = ("clinic_policies.md", "telecom_billing.html", "onboarding_handbook.txt")
PDF_OF = "onboarding_handbook.txt"  # also indexed from a PDF made here
PADDED_CHUNKS = 1000
TOP_K = 10  # hits asked for; recall@1/@5 and MRR@10 read them
TARGETS = {"recall@5": 0.9, "recall@1": 0.7, "p95_ms": 50.0}  # the balanced strategy, padded tenant
STRATEGY_OF = {m: ", ".join(s for s, sm in STRATEGY_MODES.items() if sm == m) for m in set(STRATEGY_MODES.values())}

F32 = npt.NDArray[np.float32]


# -------------------------------------------------------------------------------------------- scoring (pure)


def normalise(text: str) -> str:
    """Case, quotes, dashes and spacing aside: how an answer is looked for in a chunk."""
    text = text.lower().replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    text = text.replace("–", "-").replace("—", "-")
    return " ".join(text.split())


def relevant_chunks(texts: Sequence[str], answers: str | Sequence[str]) -> set[int]:
    """Indices of the chunk texts that hold one of the answers whole."""
    wanted = [normalise(a) for a in ([answers] if isinstance(answers, str) else answers)]
    return {i for i, t in enumerate(texts) if any(a in normalise(t) for a in wanted)}


def first_relevant_rank(ranked: Sequence[str], relevant: set[str]) -> int | None:
    """1-based rank of the first relevant id in `ranked`; None when none is."""
    for rank, item in enumerate(ranked, start=1):
        if item in relevant:
            return rank
    return None


def recall_at(ranks: Sequence[int | None], k: int) -> float:
    """Share of questions with a relevant hit in the top k."""
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks) if ranks else 0.0


def mean_reciprocal_rank(ranks: Sequence[int | None]) -> float:
    """Mean of 1/rank of the first relevant hit (0 when none was returned)."""
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks) if ranks else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def separation_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Chance that a random positive scores above a random negative (ties count half): 1 separates all, 0.5
    is a coin."""
    if not positive or not negative:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def best_threshold(positive: Sequence[float], negative: Sequence[float]) -> tuple[float, float]:
    """(threshold, accuracy) of the one cut that best separates positives (>= threshold) from negatives."""
    if not positive and not negative:
        return math.nan, math.nan
    candidates = sorted({*positive, *negative, math.inf})
    best = (math.nan, -1.0)
    total = len(positive) + len(negative)
    for cut in candidates:
        right = sum(1 for p in positive if p >= cut) + sum(1 for n in negative if n < cut)
        if right / total > best[1]:
            best = (cut, right / total)
    return best


# -------------------------------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    document: str | None
    answer: str | list[str] | None
    fact: str | None
    answerable: bool


def load_questions(path: Path = DATA / "questions.jsonl") -> list[Question]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(Question(row["id"], row["question"], row.get("document"), row.get("answer"),
                                row.get("fact"), bool(row.get("answerable", True))))  # fmt: skip
    return out


def text_pdf(text: str, *, width: int = 90, lines_per_page: int = 50) -> bytes:
    """A plain PDF of `text` (Helvetica, one text line per wrapped line, a blank line between paragraphs), written
    by hand: enough for pypdf to read back as a real PDF's text layer."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines.extend(textwrap.wrap(paragraph, width) or [""])
    pages = [lines[i : i + lines_per_page] for i in range(0, len(lines), lines_per_page)] or [[]]
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]  # fmt: skip
    kids = []
    for page in pages:
        ops = ["BT /F1 10 Tf 13 TL 60 750 Td"]
        for line in page:
            ops.append("(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("cp1252", errors="replace")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % len(objects)
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# Distractors: policy text of other organisations on other subjects, from templates. Each subject has its own
# things and sentences; the shared frames give all of them the same everyday vocabulary as the real documents
# (fees, days, requests, approvals, accounts), so keyword overlap alone does not set them apart.
_ORGS = ("Brightwater Utilities", "Maple Ridge Schools", "Copperline Freight", "Harbor Point Hotels",
         "Summit Credit Union", "Greenfield Library Network", "Atlas Engineering", "Bluebird Airlines",
         "Pinecrest Property Management", "Lakeside Veterinary Group", "Orion Software",
         "Civic Transit Authority")  # fmt: skip
_SUBJECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # subject: (headings, things, own sentences)
    "meeting rooms": (
        ("Booking rooms", "Room equipment", "Large events", "Releasing a booking", "Room etiquette"),
        ("the boardroom", "a huddle room", "the training suite", "a video conference room", "the auditorium"),
        ("Rooms that seat more than {n} people are booked through {portal}.",
         "Leave {thing} as you found it, with the whiteboard wiped and chairs pushed in.",
         "A booking that nobody checks into within {n} minutes is released automatically.",
         "Recurring bookings of {thing} expire after {n} weeks and must be renewed."),
    ),
    "fleet vehicles": (
        ("Pool cars", "Fuel cards", "Vehicle inspections", "Accidents and damage", "Mileage logs"),
        ("a pool car", "a cargo van", "the fuel card", "a fleet pickup truck", "an electric shuttle"),
        ("Before driving {thing}, walk around it and note any damage in the vehicle log.",
         "Fuel receipts for {thing} are matched against the odometer reading each {period}.",
         "Tyre pressure on {thing} is checked by {team} every {n} days.",
         "Traffic and parking fines incurred while using {thing} are the driver's responsibility."),
    ),
    "warehouse safety": (
        ("Forklift operation", "Racking inspections", "Spill response", "Loading dock rules", "Protective gear"),
        ("a forklift", "a pallet jack", "the dock leveller", "a reach truck", "the spill kit"),
        ("Only certified operators may drive {thing}; certification is renewed every {n} months.",
         "Report damaged racking to {team} immediately and cordon off the bay.",
         "Pedestrians must stay inside the marked walkways whenever {thing} is moving.",
         "The spill kit at {place} is restocked by {team} after every use."),
    ),
    "loyalty rewards": (
        ("Earning points", "Redeeming points", "Membership tiers", "Points expiry", "Partner offers"),
        ("reward points", "a gold tier membership", "a partner voucher", "a points transfer", "a bonus points offer"),
        ("Members earn {n} points for every {amount} spent with participating partners.",
         "Points expire {n} months after the last account activity.",
         "{thing_cap} cannot be exchanged for cash or combined with staff discounts.",
         "Reaching the gold tier needs {n} qualifying stays in a calendar year."),
    ),
    "supplier invoices": (
        ("Becoming a supplier", "Purchase orders", "Invoice requirements", "Payment terms", "Supplier reviews"),
        ("a purchase order", "a supplier invoice", "a credit note", "a vendor registration", "a tax form"),
        ("Suppliers are paid {n} days from the date a correct invoice is received.",
         "Every invoice must quote {thing} number, or it is returned unpaid.",
         "New suppliers complete a vendor registration and provide bank details on letterhead.",
         "Invoices above {amount} are matched against the goods receipt before payment."),
    ),
    "records retention": (
        ("Retention periods", "Archiving boxes", "Destroying records", "Legal holds", "Scanning paper files"),
        ("an archive box", "a retention label", "a legal hold notice", "a scanned file", "a shredding bin"),
        ("Financial records are kept for {n} years after the end of the fiscal year.",
         "{thing_cap} must list the department, the date range and the destruction date.",
         "Confidential paper goes into the locked shredding bins, never the recycling.",
         "A legal hold overrides every retention period until {team} lifts it."),
    ),
    "recycling": (
        ("What goes where", "Battery and electronics", "Reducing waste", "Collection days", "Site champions"),
        ("the mixed recycling bin", "a battery tube", "the compost caddy", "an e-waste crate", "a toner box"),
        ("Flatten cardboard before it goes into {thing}.",
         "Used batteries go in {thing} at {place}; never put them in general waste.",
         "Collection from {place} happens every {weekday} morning.",
         "Each floor has a sustainability champion who reports contamination to {team}."),
    ),
    "event hosting": (
        ("Planning an event", "Budgets", "Guest lists", "Venue setup", "After the event"),
        ("an event brief", "a guest list", "a venue contract", "a run sheet", "an attendee survey"),
        ("Send {thing} to {team} at least {n} weeks before the event date.",
         "External venues are contracted only by {team}, never by individual staff.",
         "Guest names must be confirmed {n} days ahead for building security.",
         "An attendee survey goes out within {n} days of the event closing."),
    ),
    "equipment loans": (
        ("Borrowing equipment", "Returning items", "Damage and loss", "Reserving in advance", "Item care"),
        ("a projector", "a portable speaker", "a loan laptop", "a camera kit", "a tripod"),
        ("{thing_cap} can be borrowed for up to {n} days at a time.",
         "Items returned late are flagged on the borrower's record after {n} days.",
         "Charge {thing} fully before returning it to {place}.",
         "A replacement charge of {amount} applies when {thing} is lost."),
    ),
    "parcel delivery": (
        ("Delivery windows", "Failed deliveries", "Damaged parcels", "Tracking", "Returns to sender"),
        ("a parcel", "a signed-for delivery", "a tracking number", "a pallet shipment", "a collection slip"),
        ("Deliveries arrive between {time} and {time2} on working days.",
         "After {n} failed attempts, {thing} is returned to the sender.",
         "Photograph {thing} before opening it if the packaging is damaged.",
         "Tracking updates for {thing} can lag by up to {n} hours."),
    ),
    "facility maintenance": (
        ("Reporting a fault", "Heating and cooling", "Lighting", "Planned works", "Out of hours"),
        ("a broken light", "the heating", "a leaking tap", "a jammed door", "the lift"),
        ("Report {thing} through {portal} with the room number and a photo.",
         "Urgent faults such as {thing} are attended within {n} hours.",
         "Planned works are announced {n} days ahead on the noticeboards.",
         "Thermostats are set centrally by {team}; do not adjust the wall units."),
    ),
    "brand guidelines": (
        ("Using the logo", "Colors and fonts", "Photography", "Templates", "Approvals"),
        ("the logo", "the slide template", "a brand photo", "the letterhead", "the color palette"),
        ("Never stretch, recolor or rotate {thing}.",
         "Keep clear space around {thing} equal to the height of the wordmark.",
         "Materials for external audiences are approved by {team} within {n} {unit}.",
         "Use only licensed photos from the brand library, credited where required."),
    ),
    "software releases": (
        ("Change requests", "Release windows", "Rollback", "Testing", "Communicating changes"),
        ("a change request", "a release note", "a rollback plan", "a test report", "a deployment"),
        ("Production releases happen on {weekday} evenings, outside peak hours.",
         "{thing_cap} needs sign-off from {approver} before the release window.",
         "Every deployment has a rollback plan tested in staging.",
         "Emergency changes are reviewed by {team} within {n} {unit} afterwards."),
    ),
    "volunteering": (
        ("Volunteer days", "Choosing a charity", "Team volunteering", "Matching donations", "Recording hours"),
        ("a volunteer day", "a charity partner", "a donation match", "a team outing", "a volunteering log"),
        ("Staff may take {n} volunteer days a year with charity partners.",
         "Donations to registered charities are matched up to {amount} per person.",
         "Record {thing} in {portal} so that it counts toward the yearly report.",
         "Team volunteering is organised through {team} with {n} weeks of notice."),
    ),
}  # fmt: skip
_FRAMES = (
    "To request {thing}, {verb} a ticket in {portal} at least {n} {unit} ahead.",
    "{team} reviews every request for {thing} within {n} {unit} and replies by email.",
    "A charge of {amount} applies when {thing} is returned damaged or incomplete.",
    "Requests for {thing} above {amount} need written approval from {approver}.",
    "If {thing} is not available, {team} will offer an alternative from {place}.",
    "Questions about {thing} go to {team}, who answer on working days between {time} and {time2}.",
    "Your manager can see the status of every request for {thing} in {portal}.",
    "Exceptions to this policy are rare and must be agreed by {approver} in advance.",
    "The rules for {thing} are reviewed every {period} and changes are posted on the intranet.",
    "Anyone who misuses {thing} may lose access to it for {n} months.",
    "Keep a record of {thing} for at least {n} {unit} in case of an audit.",
    "For anything urgent about {thing}, call {team} on extension {ext}.",
    "Contractors and visitors follow the same rules for {thing} as employees.",
    "A short online course on {thing} is available in the learning portal.",
)
_FILL: dict[str, tuple[str, ...]] = {
    "verb": ("open", "raise", "submit", "log", "file"),
    "portal": ("the request portal", "the service catalogue", "the operations app", "the intranet form",
               "the help centre"),
    "unit": ("business days", "working days", "calendar days", "weeks"),
    "team": ("Facilities", "the Operations desk", "Procurement", "Fleet Services", "the Events team",
             "the Records Office", "the Sustainability group", "the Rewards team", "Site Services",
             "the Brand team", "Release Management", "the Community team", "Logistics Control"),
    "approver": ("your line manager", "the site lead", "the budget holder", "the department head",
                 "the finance controller"),
    "place": ("the loading dock", "the third floor store", "Building D", "the north annex", "the training centre",
              "the front office", "the east gate"),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "time": ("7 a.m.", "8 a.m.", "8:30 a.m.", "9 a.m."),
    "time2": ("4 p.m.", "5 p.m.", "5:30 p.m.", "6 p.m."),
    "period": ("quarter", "month", "year", "six months"),
}  # fmt: skip


def distractor_documents(count: int, seed: int = 7) -> Iterator[tuple[str, str]]:
    """`count` Markdown documents (name, text) of templated policy text on other subjects than the real ones."""
    rng = random.Random(seed)
    subjects = list(_SUBJECTS)
    for n in range(count):
        subject = subjects[n % len(subjects)]
        headings, things, own = _SUBJECTS[subject]
        org = rng.choice(_ORGS)
        lines = [f"# {org}: {subject} policy", ""]
        for heading in rng.sample(headings, k=rng.randint(3, len(headings))):
            lines += [f"## {heading}", ""]
            for _ in range(rng.randint(1, 3)):
                thing = rng.choice(things)
                sentences = [rng.choice(own) if rng.random() < 0.45 else rng.choice(_FRAMES)
                             for _ in range(rng.randint(3, 6))]  # fmt: skip
                filled = [_fill(s, thing, rng) for s in dict.fromkeys(sentences)]
                lines += [" ".join(filled), ""]
        yield f"distractor-{n:04d}-{subject.replace(' ', '-')}.md", "\n".join(lines)


def _fill(template: str, thing: str, rng: random.Random) -> str:
    values = {key: rng.choice(options) for key, options in _FILL.items()}
    values.update(thing=thing, thing_cap=thing[:1].upper() + thing[1:])
    values.update(n=str(rng.choice((2, 3, 5, 7, 10, 14, 30))), ext=str(rng.randint(2000, 7999)))
    values["amount"] = f"${rng.choice((10, 25, 50, 75, 100, 250, 500))}"
    text = template.format(**values)
    return text[:1].upper() + text[1:]


# ------------------------------------------------------------------------------------------------- embedders


class LocalEmbedder:
    """The `embed` model's own code (orchestrator.inference.embed) in this process: the same vectors as the
    served model, without tritonserver (for tuning; its latency is not the served path's)."""

    def __init__(self) -> None:
        from orchestrator.inference.embed import SentenceEmbedder

        self._model = SentenceEmbedder(ROOT / "model_repository" / "embed" / "1")

    async def embed(self, texts: list[str]) -> F32:
        if not texts:
            return np.zeros((0, 384), np.float32)
        return self._model(texts)


@contextmanager
def triton_url(url: str) -> Iterator[str]:
    """`url`, or that of a tritonserver started here with the `embed` model alone."""
    if url:
        yield url
        return
    from orchestrator.config import TritonSettings
    from orchestrator.models.launcher import EmbeddedTriton

    log("starting tritonserver with the embed model ...")
    with EmbeddedTriton(TritonSettings(models=("embed",))) as server:
        yield server.grpc_url


async def run_served(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """`run` with `TritonModels.embed`, the path a conversation's and the API's searches take."""
    from orchestrator.models.triton import TritonModels

    models = TritonModels(url, timeout_s=120)
    try:
        await models.ready(("embed",))
        return await run(args, models)
    finally:
        await models.close()


# ------------------------------------------------------------------------------------------------------ runs


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Tenant:
    name: str
    index: KnowledgeIndex
    chunks: dict[str, list[tuple[str, Chunk]]]  # document name -> (chunk id, chunk)
    ingest_s: float

    @property
    def size(self) -> int:
        return len(self.index)


async def build_tenant(
    name: str, embedder: Embedder, documents: Sequence[tuple[str, bytes]], chunking: dict[str, int]
) -> Tenant:
    index = KnowledgeIndex()
    chunks: dict[str, list[tuple[str, Chunk]]] = {}
    start = time.perf_counter()
    for doc_name, data in documents:
        parsed = parse_document(data, filename=doc_name)
        doc_chunks = chunk_document(parsed, **chunking)
        ids = [f"{doc_name}#{c.seq}" for c in doc_chunks]
        index.add(doc_name, await embed_chunks(embedder, doc_chunks, ids))
        chunks[doc_name] = list(zip(ids, doc_chunks, strict=True))
    return Tenant(name, index, chunks, time.perf_counter() - start)


async def evaluate(
    tenant: Tenant, embedder: Embedder, questions: Sequence[Question], modes: Sequence[Mode], repeats: int
) -> list[dict[str, Any]]:
    retriever = Retriever(embedder, tenant.index)
    await retriever.search("warm up", mode="hybrid")
    rows = []
    for mode in modes:
        ranks: list[int | None] = []
        total_ms: list[float] = []
        search_ms: list[float] = []
        missed: list[str] = []
        top_similarity: dict[str, float] = {}
        for question in questions:
            for repeat in range(repeats):
                found = await retriever.search(question.question, mode=mode, top_k=TOP_K)
                total_ms.append(found.took_ms)
                search_ms.append(found.took_ms - found.embed_ms)
                if repeat:
                    continue
                # how sure the top hit is: its cosine (keyword mode has none: its keyword share)
                top = found.hits[0] if found.hits else None
                top_similarity[question.id] = (
                    -1.0 if top is None else top.score if mode == "keyword" else top.similarity
                )
                if not question.answerable or question.document is None or question.answer is None:
                    continue
                texts = tenant.chunks[question.document]
                relevant = {texts[i][0] for i in relevant_chunks([c.text for _, c in texts], question.answer)}
                rank = first_relevant_rank([h.chunk_id for h in found.hits], relevant)
                ranks.append(rank)
                if rank != 1:
                    missed.append(f"{question.id}:{rank or '-'}")
        answerable = [top_similarity[q.id] for q in questions if q.answerable]
        unanswerable = [top_similarity[q.id] for q in questions if not q.answerable]
        cut, accuracy = best_threshold(answerable, unanswerable)
        rows.append({
            "tenant": tenant.name, "chunks": tenant.size, "mode": mode, "strategy": STRATEGY_OF.get(mode, ""),
            "questions": len(ranks), "recall@1": recall_at(ranks, 1), "recall@5": recall_at(ranks, 5),
            "mrr@10": mean_reciprocal_rank(ranks),
            "p50_ms": percentile(total_ms, 50), "p95_ms": percentile(total_ms, 95),
            "search_p50_ms": percentile(search_ms, 50), "search_p95_ms": percentile(search_ms, 95),
            "answerable_similarity_median": statistics.median(answerable) if answerable else math.nan,
            "unanswerable_similarity_median": statistics.median(unanswerable) if unanswerable else math.nan,
            "no_answer_auc": separation_auc(answerable, unanswerable),
            "no_answer_threshold": cut, "no_answer_accuracy": accuracy, "not_first": missed,
        })  # fmt: skip
    return rows


def coverage(tenant: Tenant, questions: Sequence[Question]) -> list[str]:
    """Answerable questions whose answer no chunk of their document holds whole (a data or chunking fault)."""
    lost = []
    for q in questions:
        if q.answerable and q.document and q.answer:
            texts = [c.text for _, c in tenant.chunks[q.document]]
            if not relevant_chunks(texts, q.answer):
                lost.append(q.id)
    return lost


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| tenant | chunks | mode (strategy) | recall@1 | recall@5 | MRR@10 | p50 ms | p95 ms "
            "| search p50 ms | search p95 ms | no-answer AUC |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mode = f"{r['mode']} ({r['strategy']})" if r["strategy"] else r["mode"]
        lines.append(
            f"| {r['tenant']} | {r['chunks']} | {mode} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | "
            f"{r['mrr@10']:.3f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['search_p50_ms']:.2f} | "
            f"{r['search_p95_ms']:.2f} | {r['no_answer_auc']:.2f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, embedder: Embedder) -> dict[str, Any]:
    chunking = {"target_words": args.target_words, "max_words": args.max_words, "overlap_words": args.overlap_words}
    questions = load_questions()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r} (one of {', '.join(MODES)})")
    docs = [(name, (DATA / name).read_bytes()) for name in DOCUMENTS]
    log("indexing the three documents ...")
    base = await build_tenant("docs", embedder, docs, chunking)
    lost = coverage(base, questions)
    rows = await evaluate(base, embedder, questions, modes, args.repeats)

    pdf_name = PDF_OF.rsplit(".", 1)[0] + ".pdf"
    pdf = text_pdf((DATA / PDF_OF).read_text())
    pdf_docs = [(pdf_name if n == PDF_OF else n, pdf if n == PDF_OF else d) for n, d in docs]
    pdf_questions = [
        Question(q.id, q.question, pdf_name if q.document == PDF_OF else q.document, q.answer, q.fact, q.answerable)
        for q in questions
    ]
    log("indexing again with the handbook as a PDF ...")
    pdf_tenant = await build_tenant("docs (handbook as PDF)", embedder, pdf_docs, chunking)
    pdf_lost = coverage(pdf_tenant, pdf_questions)
    rows += await evaluate(pdf_tenant, embedder, pdf_questions, ["hybrid"], 1)

    padding: list[tuple[str, bytes]] = []
    if args.padded:
        need = args.padded - base.size
        chunks = 0
        for name, text in distractor_documents(10_000):
            if chunks >= need:
                break
            chunks += len(chunk_document(parse_document(text.encode(), filename=name), **chunking))
            padding.append((name, text.encode()))
        log(f"indexing the three documents and {len(padding)} distractor documents ...")
        padded = await build_tenant("padded", embedder, docs + padding, chunking)
        rows += await evaluate(padded, embedder, questions, modes, args.repeats)
    return {
        "embedder": args.embedder if not args.triton else f"triton {args.triton}",
        "chunking": chunking,
        "documents": {name: len(base.chunks[name]) for name in DOCUMENTS},
        "questions": {
            "answerable": sum(q.answerable for q in questions),
            "unanswerable": sum(not q.answerable for q in questions),
        },
        "answers_not_in_one_chunk": lost,
        "answers_not_in_one_chunk_pdf": pdf_lost,
        "ingest_s": {"docs": base.ingest_s},
        "targets": TARGETS,
        "rows": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", choices=("triton", "local"), default="triton")
    ap.add_argument("--triton", default="", help="gRPC host:port of a running tritonserver (default: start one)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--padded", type=int, default=PADDED_CHUNKS, help="chunks of the padded tenant (0: none)")
    ap.add_argument("--repeats", type=int, default=3, help="searches per question, for the latency figures")
    ap.add_argument("--target-words", type=int, default=120)
    ap.add_argument("--max-words", type=int, default=200)
    ap.add_argument("--overlap-words", type=int, default=30)
    ap.add_argument("--out", default=str(OUT / "bench_knowledge.json"))
    args = ap.parse_args()

    if args.embedder == "local":
        report = asyncio.run(run(args, LocalEmbedder()))
    else:
        with triton_url(args.triton) as url:
            report = asyncio.run(run_served(args, url))
    print(table(report["rows"]))
    print()
    print(f"embedder: {report['embedder']}; chunking: {report['chunking']}; chunks per document: "
          f"{report['documents']}; questions: {report['questions']}")  # fmt: skip
    for key in ("answers_not_in_one_chunk", "answers_not_in_one_chunk_pdf"):
        if report[key]:
            print(f"{key}: {', '.join(report[key])}")
    padded = [r for r in report["rows"] if r["tenant"] == "padded" and r["mode"] == "hybrid"]
    if padded:
        r = padded[0]
        ok = r["recall@5"] >= TARGETS["recall@5"] and r["recall@1"] >= TARGETS["recall@1"]
        ok = ok and r["p95_ms"] <= TARGETS["p95_ms"]
        print(f"balanced at {r['chunks']} chunks: recall@5 {r['recall@5']:.3f} (>= {TARGETS['recall@5']}), "
              f"recall@1 {r['recall@1']:.3f} (>= {TARGETS['recall@1']}), p95 {r['p95_ms']:.1f} ms "
              f"(<= {TARGETS['p95_ms']:.0f}): {'met' if ok else 'MISSED'}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
