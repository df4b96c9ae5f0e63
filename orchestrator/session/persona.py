"""Personas: who the replica is in a conversation (system prompt, voice, reply limits, speculation).

A persona is a YAML file `<personas_dir>/<name>.yaml`; `start.persona` picks it by name. Unknown names and
malformed files are a typed `bad_option` error at session start, never a fallback to another persona.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.errors import BadOption
from orchestrator.perception.tools import PerceptionTool, parse_tools

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Persona:
    id: str
    name: str
    system_prompt: str
    voice: str = ""  # empty: the TTS default voice
    speculation: bool = True  # start replies on eot_tentative
    max_tokens: int = 64
    temperature: float = 0.3
    max_sentences: int = 2  # stop generating after this many sentences: a spoken reply is short
    face: str = ""  # portrait in faces/ (empty: the server's default face)
    emotion: str = ""  # the face's resting emotion (empty: the server's default)
    # conditions on what perception sees/hears that fire `perception_tool_call` (orchestrator/perception/tools.py)
    perception_tools: tuple[PerceptionTool, ...] = ()
    greeting: str = ""  # spoken as soon as a conversation starts (empty: the replica waits for the user)
    llm_model: str = ""  # the local model replies come from (a name the `llm` model serves; empty: its default)
    vocabulary: tuple[str, ...] = ()  # names and terms the recogniser should expect ("Dr. Patel", product names)
    context: str = ""  # what the replica should know for the conversation (its `overwrite_context` can change it)


def load_persona(personas_dir: str | Path, persona_id: str) -> Persona:
    if not _NAME.match(persona_id):
        raise BadOption(f"persona name {persona_id!r} is invalid (letters, digits, '-' and '_' only)")
    path = Path(personas_dir) / f"{persona_id}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(personas_dir).glob("*.yaml"))
        raise BadOption(f"unknown persona {persona_id!r} (known: {', '.join(known) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BadOption(f"persona {persona_id!r}: cannot read {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise BadOption(f"persona {persona_id!r}: {path.name} must hold a mapping")
    allowed = {
        "name",
        "system_prompt",
        "voice",
        "speculation",
        "max_tokens",
        "temperature",
        "max_sentences",
        "face",
        "emotion",
        "perception_tools",
        "greeting",
        "llm_model",
        "vocabulary",
        "context",
    }
    unknown = set(data) - allowed
    if unknown:
        raise BadOption(f"persona {persona_id!r}: unknown keys {sorted(unknown)}")
    prompt = data.get("system_prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadOption(f"persona {persona_id!r}: system_prompt must be non-empty text")
    try:
        persona = Persona(
            id=persona_id,
            name=str(data.get("name", persona_id)),
            system_prompt=prompt.strip(),
            voice=str(data.get("voice", "")),
            speculation=bool(data.get("speculation", True)),
            max_tokens=int(data.get("max_tokens", 64)),
            temperature=float(data.get("temperature", 0.3)),
            max_sentences=int(data.get("max_sentences", 2)),
            face=str(data.get("face", "")),
            emotion=str(data.get("emotion", "")),
            perception_tools=parse_tools(data.get("perception_tools")),
            greeting=_text(data.get("greeting", ""), "greeting"),
            llm_model=_text(data.get("llm_model", ""), "llm_model"),
            vocabulary=_terms(data.get("vocabulary", [])),
            context=_text(data.get("context", ""), "context"),
        )
    except (TypeError, ValueError) as exc:
        raise BadOption(f"persona {persona_id!r}: {exc}") from exc
    if not 1 <= persona.max_tokens <= 1024 or not 0.0 <= persona.temperature <= 2.0 or persona.max_sentences < 1:
        raise BadOption(f"persona {persona_id!r}: need max_tokens 1..1024, temperature 0..2, max_sentences >= 1")
    return persona


def _text(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be text")
    return value.strip()


def _terms(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError("vocabulary must be a list of non-empty terms")
    return tuple(v.strip() for v in value)
