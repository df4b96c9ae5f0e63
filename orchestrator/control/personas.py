"""Personas as data: the API's persona body, the built-in templates (the YAML files in `personas/`), and the
`Persona` a session runs with.

The body is checked against the OpenAPI document first (types, sizes, unknown fields); the rules here are the
ones a schema cannot say: a system prompt is needed unless a template gives one, a face must be the tenant's
own (or a built-in one), an OpenAI-compatible endpoint must be http(s) on an allowed host.
"""

from __future__ import annotations

import copy
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import BadOption, DuetError, Invalid
from orchestrator.perception.tools import parse_tools
from orchestrator.session.persona import Persona, load_persona

LAYERS = ("llm", "tts", "perception", "conversational_flow")


def template_body(persona: Persona) -> dict[str, Any]:
    """A built-in persona as an API persona body."""
    llm: dict[str, Any] = {
        "temperature": persona.temperature,
        "max_tokens": persona.max_tokens,
        "max_sentences": persona.max_sentences,
        "speculation": persona.speculation,
    }
    if persona.llm_model:
        llm["model"] = persona.llm_model
    body: dict[str, Any] = {
        "name": persona.name,
        "system_prompt": persona.system_prompt,
        "greeting": persona.greeting,
        "voice": persona.voice,
        "emotion": persona.emotion,
        "vocabulary": list(persona.vocabulary),
        "layers": {"llm": llm},
    }
    if persona.context:
        body["context"] = persona.context
    if persona.face:
        body["face_id"] = persona.face
    return body


class Templates:
    """The YAML personas of `personas_dir`, read when asked (they are few and small)."""

    def __init__(self, personas_dir: str | Path) -> None:
        self.dir = Path(personas_dir)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.yaml"))

    def body(self, name: str) -> dict[str, Any]:
        try:
            return template_body(load_persona(self.dir, name))
        except BadOption as err:
            raise Invalid(err.message, "$.template") from err

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            try:
                out.append({"template": name, **self.body(name)})
            except Invalid:
                continue  # a broken file in the folder is not the caller's problem
        return out


def merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`patch` over `base`: top-level fields replace, `layers` merge per layer (a layer's fields replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if key == "layers" and isinstance(value, Mapping):
            layers = dict(out.get("layers") or {})
            for layer, fields in value.items():
                layers[layer] = {**dict(layers.get(layer) or {}), **dict(fields)}
            out["layers"] = layers
        else:
            out[key] = copy.deepcopy(value)
    return out


def installed_voices(model_repository: str | Path) -> set[str] | None:
    """The piper voices the `tts` model of this model repository has (None when the folder is not here: a
    remote Triton's voices are not known, so nothing is refused)."""
    folder = Path(model_repository) / "tts" / "1" / "voices"
    voices = {p.name.removesuffix(".onnx") for p in folder.glob("*.onnx")} if folder.is_dir() else set()
    return voices or None


def check_body(body: Mapping[str, Any], *, allowed_llm_hosts: Sequence[str], voices: set[str] | None = None) -> None:
    """The rules the schema cannot state; raises `Invalid` naming the field."""
    prompt = body.get("system_prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid("system_prompt is required (or start from a `template` that has one)", "$.system_prompt")
    llm = (body.get("layers") or {}).get("llm") or {}
    if llm.get("backend") == "openai" and not llm.get("base_url"):
        raise Invalid("an `openai` LLM layer needs base_url (an OpenAI-compatible endpoint)", "$.layers.llm.base_url")
    if base_url := llm.get("base_url"):
        check_endpoint(base_url, allowed_llm_hosts)
    # a voice the tts model lacks would fail every reply of every call; refuse it here instead
    tts_voice = ((body.get("layers") or {}).get("tts") or {}).get("voice")
    for field, voice in (("$.voice", body.get("voice")), ("$.layers.tts.voice", tts_voice)):
        if voices is not None and voice and voice not in voices:
            raise Invalid(f"no voice {voice!r} (this server has: {', '.join(sorted(voices))})", field)
    tools = (body.get("layers") or {}).get("perception", {}).get("tools")
    if tools:
        try:
            parse_tools(tools)
        except DuetError as err:
            raise Invalid(err.message, "$.layers.perception.tools") from err


def http_host(url: str, field: str) -> str:
    """The host of an http(s) URL a body names (`Invalid` at `field` for anything else)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{field.removeprefix('$.')} must be an http(s) URL", field)
    return parts.hostname


def check_endpoint(url: str, allowed_hosts: Sequence[str]) -> None:
    host = http_host(url, "$.layers.llm.base_url")
    if allowed_hosts and host not in allowed_hosts:
        raise Invalid(
            f"host {host!r} is not one this server allows for LLM endpoints (api.allowed_llm_hosts)",
            "$.layers.llm.base_url",
        )


def public(persona_id: str, body: Mapping[str, Any], created_at: str, updated_at: str) -> dict[str, Any]:
    """A persona as the API shows it: the LLM layer's key never leaves; `api_key_set` says whether there is one."""
    out = copy.deepcopy(dict(body))
    layers = dict(out.get("layers") or {})
    if "llm" in layers:
        llm = dict(layers["llm"])
        llm["api_key_set"] = bool(llm.pop("api_key", None))
        layers["llm"] = llm
    out["layers"] = layers
    for key, default in (("context", ""), ("greeting", ""), ("voice", ""), ("emotion", ""), ("face_id", None)):
        out.setdefault(key, default)
    for key in ("vocabulary", "document_ids", "document_tags", "guardrail_ids"):
        out.setdefault(key, [])
    out.setdefault("objectives_id", None)
    out.setdefault("template", None)  # the template it was created from, if any
    return {"persona_id": persona_id, **out, "created_at": created_at, "updated_at": updated_at}


def runtime_persona(
    persona_id: str,
    body: Mapping[str, Any],
    *,
    face: str | None = None,
    greeting: str | None = None,
    context: str | None = None,
) -> Persona:
    """The `Persona` a session runs with: the body, with a conversation's overrides."""
    layers = body.get("layers") or {}
    llm = layers.get("llm") or {}
    tts = layers.get("tts") or {}
    perception = layers.get("perception") or {}
    try:
        tools = parse_tools(perception.get("tools")) if perception.get("enabled", True) else ()
    except DuetError as err:
        raise BadOption(f"persona {persona_id}: {err.message}") from err
    return Persona(
        id=persona_id,
        name=str(body.get("name", persona_id)),
        system_prompt=str(body.get("system_prompt", "")).strip(),
        voice=str(tts.get("voice") or body.get("voice") or ""),
        speculation=bool(llm.get("speculation", True)),
        max_tokens=int(llm.get("max_tokens", 64)),
        temperature=float(llm.get("temperature", 0.3)),
        max_sentences=int(llm.get("max_sentences", 2)),
        face=face if face is not None else str(body.get("face_id") or ""),
        emotion=str(body.get("emotion") or ""),
        perception_tools=tools,
        greeting=(greeting if greeting is not None else str(body.get("greeting") or "")).strip(),
        llm_model=str(llm.get("model") or "") if llm.get("backend", "local") == "local" else "",
        vocabulary=tuple(str(v) for v in body.get("vocabulary") or ()),
        context=(context if context is not None else str(body.get("context") or "")).strip(),
    )
