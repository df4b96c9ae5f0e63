"""A client's requests, validated into what the session core takes: a session spec, a clip spec.

Every field is checked before any work starts; a bad one is a typed error (`bad_option`,
`bad_audio_format`, `bad_timings`, ...) naming what was wrong.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np

from duet.proto import session_pb2 as pb
from orchestrator.config import FaceSettings, Settings, coerce_bool, validate, with_floor_options
from orchestrator.errors import BadAudioFormat, BadOption, BadTimings
from orchestrator.face.clip import ClipSpec, parse_timings
from orchestrator.face.library import FaceLibrary, check_size
from orchestrator.session.factory import MODES, SessionSpec
from orchestrator.session.persona import load_persona


def check_audio_format(fmt: pb.AudioFormat) -> None:
    problems = []
    if fmt.sample_rate != 16000:
        problems.append(f"sample_rate {fmt.sample_rate} Hz (need 16000)")
    if fmt.channels != 1:
        problems.append(f"{fmt.channels} channels (need mono)")
    if fmt.sample_width != 2:
        problems.append(f"sample width {fmt.sample_width} bytes (need 2, PCM16)")
    if fmt.encoding not in ("", "pcm_s16le"):
        problems.append(f"encoding {fmt.encoding!r} (need pcm_s16le)")
    if problems:
        raise BadAudioFormat("unsupported audio format: " + "; ".join(problems))


def parse_options(settings: Settings, options: dict[str, str]) -> SessionSpec:
    """`Start.options`, validated, as a session spec (the persona is the caller's to add). Options: `mode`
    (`orchestrator.session.factory.MODES`), `floor.*` (the floor's settings), `speculation`,
    `warm_words` (evaluate the user's words in the LLM while they speak; the server's `llm.warm_words`),
    `echo_suppression`, `perception` (conversation: on unless `perception=false`; perceive: on), `video` with
    `video.fps`, `video.size=WxH`, `video.quality`, `video.face`, `video.ahead_ms`, `playback_lead_ms`,
    `llm_model` (a model the `llm` model serves,
    or the OpenAI-compatible endpoint's; instead of the persona's; a name the model does not serve fails the
    first reply with `bad_option`)."""
    floor_opts = {k: v for k, v in options.items() if k.startswith("floor.")}
    rest = {k: v for k, v in options.items() if not k.startswith("floor.")}
    floor = with_floor_options(settings.floor, floor_opts)
    mode = rest.pop("mode", "conversation")
    if mode not in MODES:
        raise BadOption(f"option mode must be one of {', '.join(MODES)}; not {mode!r}")
    spec = coerce_bool(rest.pop("speculation"), "speculation") if "speculation" in rest else None
    words = coerce_bool(rest.pop("warm_words"), "warm_words") if "warm_words" in rest else None
    echo = coerce_bool(rest.pop("echo_suppression"), "echo_suppression") if "echo_suppression" in rest else None
    lead = parse_lead(rest.pop("playback_lead_ms")) if "playback_lead_ms" in rest else None
    if lead is not None:  # (the face may render as far ahead as the session's own lead)
        settings = dataclasses.replace(
            settings, conversation=dataclasses.replace(settings.conversation, playback_lead_ms=lead)
        )
    video = parse_video(settings, rest) if coerce_bool(rest.pop("video", "false"), "video") else None
    perceive = coerce_bool(rest.pop("perception", "true"), "perception") and mode in ("conversation", "perceive")
    llm_model = rest.pop("llm_model", "").strip()
    if llm_model and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}", llm_model):
        raise BadOption(f"option llm_model must be a model name (letters, digits, . _ : / -); not {llm_model!r}")
    if rest:
        raise BadOption(f"unknown session option(s) {sorted(rest)}")
    if video is not None and mode != "conversation":
        raise BadOption("video needs mode=conversation (the face speaks the replies)")
    return SessionSpec(
        floor=floor,
        mode=mode,
        speculation=spec,
        warm_words=words,
        echo_suppression=echo,
        video=video,
        perception=perceive,
        llm_model=llm_model,
        playback_lead_ms=lead,
    )


def parse_lead(value: str) -> int:
    """`playback_lead_ms`: how far ahead of the input clock the replica's audio is sent (40..1000). A client
    that plays audio by its time (gRPC) or holds it until then (WebRTC) can take a longer lead; the face can
    then render further ahead."""
    try:
        lead = int(value)
    except ValueError:
        raise BadOption(f"option playback_lead_ms must be an integer (ms), not {value[:40]!r}") from None
    if not 40 <= lead <= 1000:
        raise BadOption(f"option playback_lead_ms must be within 40..1000 ms, not {lead}")
    return lead


def parse_video(settings: Settings, options: dict[str, str]) -> FaceSettings:
    """`video.fps`, `video.size` (WxH), `video.quality`, `video.face` and `video.ahead_ms` on top of the
    server's face settings."""
    face = settings.face
    updates: dict[str, Any] = {}
    try:
        if "video.fps" in options:
            updates["fps"] = float(options.pop("video.fps"))
        if "video.quality" in options:
            updates["quality"] = int(options.pop("video.quality"))
        if "video.size" in options:
            w, h = options.pop("video.size").lower().split("x")
            updates["width"], updates["height"] = int(w), int(h)
        if "video.ahead_ms" in options:
            updates["ahead_s"] = float(options.pop("video.ahead_ms")) / 1000
    except ValueError as exc:
        raise BadOption(
            f"video options: {exc} (video.fps=25, video.size=512x512, video.quality=80, video.ahead_ms=120)"
        ) from None
    if "video.face" in options:
        updates["face"] = options.pop("video.face")
    out = dataclasses.replace(face, **updates)
    # the face's own rules, and its lead against the session's playback lead (only those: a client command's
    # embedded stack runs with settings of its own, such as port 0, that a server's validation would refuse)
    validate(Settings(face=out, conversation=settings.conversation))
    return out


def clip_spec(settings: Settings, req: pb.RenderRequest) -> ClipSpec:
    """A `RenderRequest` with the server's (and the persona's) defaults filled in; bad fields are typed errors."""
    f = settings.face
    persona = load_persona(settings.conversation.personas_dir, req.persona or settings.conversation.persona)
    width, height = (req.width or f.width), (req.height or f.height)
    check_size(width, height)
    fps = req.fps or f.fps
    if not 1.0 <= fps <= 60.0:
        raise BadOption(f"fps {fps:g} is out of range (1..60)")
    if not 0.0 <= req.intensity <= 1.0:
        raise BadOption(f"intensity {req.intensity:g} is out of range (0..1)")
    if req.quality > 100:
        raise BadOption(f"JPEG quality {req.quality} is out of range (1..100)")
    audio = None
    timings: tuple[Any, ...] = ()
    if req.audio_pcm or req.timings_json:
        if not (req.audio_pcm and req.timings_json):
            raise BadTimings("lip-syncing given audio needs both audio_pcm and timings_json")
        if len(req.audio_pcm) % 2:
            raise BadAudioFormat("audio_pcm must be PCM16 (an even number of bytes)")
        audio = np.frombuffer(req.audio_pcm, dtype="<i2").astype(np.int16)
        timings = parse_timings(req.timings_json, audio.shape[0] / 16000)
    face = req.face or persona.face or f.face
    if Path(f.faces_dir).is_dir():  # a local model repository: name a missing face before any work
        FaceLibrary(f.faces_dir, f.faces_dir).path(face)
    return ClipSpec(
        text=req.text,
        emotion=req.emotion or persona.emotion or f.emotion,
        intensity=req.intensity or f.intensity,
        width=width,
        height=height,
        fps=fps,
        face=face,
        voice=persona.voice,
        quality=req.quality or f.quality,
        seed=req.seed,
        audio=audio,
        timings=timings,
        duration=req.duration_s,
        listening=req.listening,
    )
