"""The models' vocabulary: the shared types and the `Protocol`s the session core calls.

Pure: no `tritonclient` here. `orchestrator.models.triton.TritonModels` implements every protocol over one
Triton channel per server; `orchestrator.models.openai_llm.OpenAIChat` implements `LanguageModel`; tests use fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I16 = npt.NDArray[np.int16]


@dataclass(frozen=True)
class FloorEstimate:
    p_yield: float
    p_turn: float
    prosody: F32  # the end-of-phrase prosody vector the fusion used


class FloorModels(Protocol):
    async def vad(self, audio: I16, state: F32) -> tuple[float, F32]: ...

    async def floor(self, audio: I16, pause_samples: int, text: str, context: str) -> FloorEstimate: ...

    async def fuse(self, acoustics: FloorEstimate, pause_samples: int, text: str, context: str) -> FloorEstimate: ...


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds from the start of the audio given to the recogniser
    end: float
    probability: float


@dataclass(frozen=True)
class Transcript:
    text: str
    words: tuple[Word, ...] = ()


class SpeechRecognizer(Protocol):
    async def transcribe(self, audio: I16, prompt: str = "") -> Transcript:
        """Transcribe 16 kHz PCM16 (one utterance, at most ~28 s); `prompt` is earlier conversation text."""
        ...


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class LlmRequest:
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 96  # 0: a prefill (the local model evaluates the messages, generates nothing)
    temperature: float = 0.3
    stop: tuple[str, ...] = ()
    request_id: str = ""
    model: str = ""  # which local model (a name the `llm` model serves); "" = its default
    # A JSON Schema (as JSON text) the reply must satisfy: the local model decodes under a grammar built from
    # it, an OpenAI-compatible endpoint gets it as `response_format` (json_schema). "" = free text.
    json_schema: str = ""


class LanguageModel(Protocol):
    def generate(self, request: LlmRequest) -> AsyncIterator[str]:
        """Stream text pieces. Closing the iterator early (`aclose()`, or cancelling the task iterating it)
        cancels the request end to end: the model stops generating."""
        ...


@dataclass(frozen=True)
class Phoneme:
    phoneme: str
    start: float  # seconds from the start of this chunk's audio
    end: float


@dataclass(frozen=True)
class SpeechChunk:
    pcm: I16  # 16 kHz mono
    text: str  # the text this audio speaks
    phonemes: tuple[Phoneme, ...] = ()


class SpeechSynthesizer(Protocol):
    def synthesize(self, text: str, voice: str = "") -> AsyncIterator[SpeechChunk]:
        """Stream audio sentence by sentence; closing the iterator early cancels the request."""
        ...


@dataclass(frozen=True)
class RenderedFrames:
    """A run of JPEG frames from `face_render`: frame numbers `first`, `first + 1`, ... of the request."""

    first: int
    jpegs: tuple[bytes, ...]


class FaceModels(Protocol):
    async def face_motion(self, request_json: str) -> F32:
        """Per-frame face parameters (frames, SIZE) for a `orchestrator.face.motion.MotionRequest`."""
        ...

    def render_frames(
        self, face: str, params: F32, width: int, height: int, quality: int
    ) -> AsyncIterator[RenderedFrames]:
        """JPEG frames for `params`, streamed in runs as they are drawn; closing early cancels the request."""
        ...


class PerceptionModels(Protocol):
    async def voice_features(self, frames: I16) -> F32:
        """(n, CONTEXT + 320) int16 hops -> (n, K) feature rows (`perception_audio`)."""
        ...

    async def analyze_frame(self, image: bytes) -> dict[str, Any]:
        """One JPEG/PNG camera frame -> `frame_result` (`perception_face`)."""
        ...


EMBED_DIM = 384  # the `embed` model's vector size (all-MiniLM-L6-v2)


class Embedder(Protocol):
    async def embed(self, texts: list[str]) -> F32:
        """Sentence embeddings, (len(texts), EMBED_DIM) float32, each row L2-normalised (cosine = dot product).
        Texts longer than the model's window (256 word pieces) are cut; an empty list gives (0, EMBED_DIM)."""
        ...


class ConversationModels(FloorModels, SpeechSynthesizer, Protocol):
    """What a conversation needs from the serving layer besides its LLM (`TritonModels` provides all of it)."""

    async def transcribe(self, audio: I16, prompt: str = "", *, word_timings: bool = True) -> Transcript: ...


class SessionModels(ConversationModels, FaceModels, PerceptionModels, Protocol):
    """Everything a session of any mode may call (`TritonModels`, or one session's `GatedModels` view of it)."""
