"""Triton glue for Whisper speech recognition; the logic is orchestrator.inference.asr."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.inference.asr import DecodeOptions, WhisperRecognizer, words_to_json
from orchestrator.inference.device import ModelDevice

REPO_ROOT = Path(__file__).resolve().parents[3]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = DecodeOptions(
            margin_s=float(params.get("margin_s", "1.0")),
            bucket_s=float(params.get("bucket_s", "1.0")),
            min_window_s=float(params.get("min_window_s", "4.0")),
            word_timestamps=params.get("word_timestamps", "true").lower() == "true",
            beam_size=int(params.get("beam_size", "1")),
            final_beam_size=int(params.get("final_beam_size", "5")),
        )
        self.recognizer = WhisperRecognizer(
            Path(__file__).parent / params.get("model_dir", "whisper-base"),
            threads=int(params.get("intra_op_threads", "2")),
            compute_type=params.get("compute_type", "int8"),
            language=params.get("language", "en"),
            options=options,
            # device gpu: CUDA with gpu_compute_type; compute_type stays the CPU's (and the fallback's)
            device=ModelDevice.from_triton(params, args, REPO_ROOT),
            gpu_compute_type=params.get("gpu_compute_type", "float16"),
        )

    def execute(self, requests):
        # A request may itself carry a batch (AUDIO [B, N], PROMPT [B, 1]); every row is one utterance.
        default_timings = self.recognizer.options.word_timestamps
        audios, prompts, timings, sizes = [], [], [], []
        for r in requests:
            audio = pb_utils.get_input_tensor_by_name(r, "AUDIO").as_numpy()
            prompt = pb_utils.get_input_tensor_by_name(r, "PROMPT").as_numpy().reshape(-1)
            rows = list(audio) if audio.ndim == 2 else [audio]
            audios.extend(rows)
            prompts.extend(p.decode() if isinstance(p, bytes) else str(p) for p in prompt[: len(rows)])
            prompts.extend("" for _ in range(len(rows) - prompt.shape[0]))
            flag = pb_utils.get_input_tensor_by_name(r, "WORD_TIMESTAMPS")
            want = bool(flag.as_numpy().reshape(-1)[0]) if flag is not None else default_timings
            timings.extend(want for _ in rows)
            sizes.append(len(rows))
        try:
            results = self.recognizer(audios, prompts, timings)
        except ValueError as exc:
            # One bad request must not fail the others batched with it: retry them one by one.
            if len(requests) == 1:
                return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))]
            return [self.execute([r])[0] for r in requests]
        responses, start = [], 0
        for n in sizes:
            part = results[start : start + n]
            start += n
            text = np.array([[r.text.encode()] for r in part], dtype=np.object_)
            words = np.array([[words_to_json(r.words).encode()] for r in part], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("TEXT", text), pb_utils.Tensor("WORDS", words)]
                )
            )
        return responses
