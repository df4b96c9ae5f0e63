"""Memories from what the user said about themselves: their first-person statements, put in the third person.

After a conversation, the facts worth remembering about a caller are the things they said about themselves:
"my name is Priya", "I'm allergic to penicillin", "I prefer text messages". This module finds those statements
(first person, not a question, not small talk, about something that lasts: names, family, home, health,
preferences, accounts) and rewrites each as a short fact ("The user is allergic to penicillin."), so that a
later call's replica reads it about the person it talks to.

Why rules and not the LLM: on the default local model (Qwen2.5-Coder-0.5B), schema-constrained extraction
missed names and places that were said plainly, invented eight facts from a call that had none, and took 7 to
28 s per call (docs/intelligence.md). The rules keep the user's own words, cost microseconds, and never invent.
The LLM extractor (`orchestrator/control/memories.py`) stays available for larger models (`intel.memory_extractor:
llm`).

Pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_CLAUSES = re.compile(r",\s+(?:and|but|so)\s+|\s+but\s+|;\s*|\s+and\s+(?=(?:I|I'm|I've|I'd|my|My)\b)")
_OPENERS = re.compile(
    r"^(?:(?:hi|hello|hey|yes|yeah|yep|no|nope|ok|okay|so|well|um|uh|oh|right|sure|great|thanks|thank you|"
    r"good (?:morning|afternoon|evening))\b[,.!]?\s*)+",
    re.IGNORECASE,
)
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|i've|i'd|i'll|my|me|mine|myself)\b", re.IGNORECASE)
# What makes a statement worth keeping: who they are, who they live with, where, their health, what they like,
# what they hold with the organisation.
_DURABLE = re.compile(
    r"\b(?:name|called|call me|live|lives|living|moved|moving|from|born|birthday|age|years? old|married|wife|"
    r"husband|partner|son|daughter|kids?|children|mother|father|mom|mum|dad|sister|brother|dog|cat|pets?|work|"
    r"works|job|retired|student|allergic|allergy|allergies|diabetes|diabetic|asthma|pregnant|condition|medication|"
    r"prefer|prefers|favou?rite|like|likes|love|loves|hate|vegetarian|vegan|account|plan|policy|subscription|"
    r"customer|member|number|email|phone|address|car|house|home|apartment|speak|language|always|usually|never|"
    r"every)\b",
    re.IGNORECASE,
)
_SMALL_TALK = re.compile(
    r"^(?:i'?m (?:fine|good|ok|okay|great|well|sorry|here|back)|i (?:see|know|guess|think so|understand|agree|mean))"
    r"\b",
    re.IGNORECASE,
)
_SUBJECT_FORMS = {
    "i'm": "the user is",
    "i am": "the user is",
    "i was": "the user was",
    "i've": "the user has",
    "i have": "the user has",
    "i'd": "the user would",
    "i'll": "the user will",
    "i do": "the user does",
    "i don't": "the user doesn't",
    "i didn't": "the user didn't",
    "i can't": "the user can't",
    "i won't": "the user won't",
}
_MODALS = frozenset("can could will would should might must may".split())
_ADVERBS = "just|also|really|usually|always|never|often|sometimes|still|recently|only|already|even|mostly|normally"
_NOT_PAST = frozenset({"need", "feed", "bleed", "speed", "breed", "seed", "proceed", "succeed", "exceed", "heed"})
MIN_WORDS = 3


def _third_person_verb(word: str) -> str:
    w = word.lower()
    if w in _MODALS or (w.endswith("ed") and w not in _NOT_PAST):
        return word
    if re.search(r"(?:s|sh|ch|x|z|o)$", w):
        return word + "es"
    if re.search(r"[^aeiou]y$", w):
        return word[:-1] + "ies"
    return word + "s"


def third_person(sentence: str) -> str:
    """ "I moved to Denver with my dog" -> "The user moved to Denver with the user's dog" (one statement)."""
    s = sentence
    for first, third in sorted(_SUBJECT_FORMS.items(), key=lambda kv: -len(kv[0])):
        s = re.sub(rf"\b{re.escape(first)}\b", third, s, flags=re.IGNORECASE)
    s = re.sub(
        rf"\bI\s+((?:(?:{_ADVERBS})\s+)*)([A-Za-z']+)",
        lambda m: f"the user {m.group(1)}{_third_person_verb(m.group(2))}",
        s,
    )
    s = re.sub(r"\bmy\b", "the user's", s, flags=re.IGNORECASE)
    s = re.sub(r"\b(?:me|myself)\b", "them", s, flags=re.IGNORECASE)
    s = re.sub(r"\bmine\b", "theirs", s, flags=re.IGNORECASE)
    s = s.strip()
    return s[0].upper() + s[1:] if s else s


def first_person_facts(turns: Sequence[tuple[str, str]], limit: int) -> list[str]:
    """Facts from the user's turns (`(role, text)`, role "user" or the replica's), in the order said, at most
    `limit`, each once."""
    out: list[str] = []
    for role, text in turns:
        if role != "user":
            continue
        for sentence in _SENTENCE.split(" ".join(text.split())):
            if sentence.rstrip().endswith("?"):
                continue
            for part in _CLAUSES.split(sentence):
                s = _OPENERS.sub("", part.strip()).strip(" ,")
                if len(s.split()) < MIN_WORDS or not _FIRST_PERSON.search(s):
                    continue
                if _SMALL_TALK.search(s) or not _DURABLE.search(s):
                    continue
                fact = third_person(s).rstrip(" .!") + "."
                if fact not in out:
                    out.append(fact)
    return out[:limit]
