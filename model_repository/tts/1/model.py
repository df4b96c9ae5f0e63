"""Triton glue for Piper TTS (decoupled); the logic is orchestrator.inference.tts."""

import json
from collections import deque
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.inference.device import ModelDevice, onnx_providers
from orchestrator.inference.tts import VoiceLibrary, sentences

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
REPO_ROOT = Path(__file__).resolve().parents[3]
COUNTERS = {
    "duet_tts_sentences_total": "Sentences synthesised by the tts model (stops growing when a request is cancelled)",
    "duet_tts_cancelled_requests_total": "tts requests that stopped with sentences left because the client cancelled",
}


class _Reply:
    """One request in flight: its sender, voice and the sentences still to speak."""

    def __init__(self, request, sender, speaker, pending):
        self.request, self.sender, self.speaker, self.pending = request, sender, speaker, deque(pending)


def _string(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return ""
    value = tensor.as_numpy().reshape(-1)
    if value.size != 1:
        raise ValueError(f"{name} must hold one string, got {value.size}")
    raw = value[0]
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.clause_max_chars = int(params.get("clause_max_chars", "160"))
        self.voices = VoiceLibrary(
            Path(__file__).parent / params.get("voices_dir", "voices"),
            params.get("default_voice", "en_US-joe-medium"),
            threads=int(params.get("intra_op_threads", "1")),
            noise_scale=float(params.get("noise_scale", "0")),
            noise_w=float(params.get("noise_w", "0")),
            providers=onnx_providers(ModelDevice.from_triton(params, args, REPO_ROOT)),
        )
        labels = {"model": args["model_name"], "version": args["model_version"]}
        # Triton requires each MetricFamily to outlive its Metrics, so the families are kept on the model.
        self._families = {
            name: pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.COUNTER)
            for name, text in COUNTERS.items()
        }
        self.spoken = self._families["duet_tts_sentences_total"].Metric(labels=labels)
        self.cancelled = self._families["duet_tts_cancelled_requests_total"].Metric(labels=labels)

    def finalize(self):
        del self.spoken, self.cancelled  # metrics before their families (Triton refuses the other order)
        self._families.clear()

    def execute(self, requests):
        replies = []
        for request in requests:
            sender = request.get_response_sender()
            try:
                text, voice = _string(request, "TEXT"), _string(request, "VOICE")
                replies.append(_Reply(request, sender, self.voices.get(voice), sentences(text, self.clause_max_chars)))
            except (ValueError, UnicodeDecodeError) as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
        try:
            # Round robin over the batch: every session gets its next sentence before anyone gets a second one.
            while replies:
                for reply in list(replies):
                    if reply.request.is_cancelled() or not reply.pending:
                        if reply.pending:
                            self.cancelled.increment(1)
                        replies.remove(reply)
                        reply.sender.send(flags=FINAL)
                        continue
                    spoken = reply.speaker.synthesize(reply.pending.popleft())
                    self.spoken.increment(1)
                    reply.sender.send(
                        pb_utils.InferenceResponse(
                            output_tensors=[
                                pb_utils.Tensor("AUDIO", spoken.pcm.reshape(1, -1)),
                                pb_utils.Tensor("TEXT", np.array([[spoken.text.encode()]], dtype=np.object_)),
                                pb_utils.Tensor(
                                    "PHONEMES", np.array([[spoken.phonemes_json().encode()]], dtype=np.object_)
                                ),
                            ]
                        )
                    )
        except Exception as exc:  # a synthesis failure ends the whole batch with the error, not a hang
            for reply in replies:
                reply.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"tts failed: {exc}")))
            pb_utils.Logger.log_error(f"tts failed: {exc!r}")
        finally:
            for reply in replies:
                reply.sender.send(flags=FINAL)
