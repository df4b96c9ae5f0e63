"""Triton glue for the face renderer (decoupled); the logic is orchestrator.face (render, library)."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.errors import DuetError
from orchestrator.face.library import RenderPool
from orchestrator.inference.device import ModelDevice

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
REPO_ROOT = Path(__file__).resolve().parents[3]


def _string(request, name):
    raw = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


class _Job:
    """One request: its sender and the frames still to render."""

    def __init__(self, request, sender, key, params, quality):
        self.request, self.sender, self.key, self.params, self.quality = request, sender, key, params, quality
        self.next = 0


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # device: auto (CUDA when torch sees one, else the CPU), cpu, cuda, or gpu (the GPU of this KIND_GPU instance).
        device = p.get("device", "auto")
        if device == "gpu":
            device = ModelDevice.from_triton(p, args, REPO_ROOT).torch
        self.pool = RenderPool(
            faces_dir=REPO_ROOT / p.get("faces_dir", "faces"),
            cache_dir=REPO_ROOT / p.get("cache_dir", ".cache/faces"),
            device=device,
            threads=int(p.get("torch_threads", "2")),
        )
        self.round_frames = int(p.get("gpu_batch_frames" if self.pool.on_gpu else "cpu_batch_frames", "4"))
        # Frames drawn, on Triton's /metrics: a cancelled request stops adding to it (the family must outlive
        # its metric, so both are kept).
        self._frames_family = pb_utils.MetricFamily(
            name="duet_face_frames_total",
            description="Frames drawn by the face_render model (stops growing when a request is cancelled)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.frames = self._frames_family.Metric(labels={"model": args["model_name"], "version": args["model_version"]})

    def finalize(self):
        del self.frames  # the metric before its family (Triton refuses the other order)
        del self._frames_family

    def _job(self, request):
        sender = request.get_response_sender()
        try:
            face = _string(request, "FACE")
            params = pb_utils.get_input_tensor_by_name(request, "PARAMS").as_numpy()
            params = params.reshape(-1, params.shape[-1]).astype(np.float32, copy=False)
            width, height = (int(v) for v in pb_utils.get_input_tensor_by_name(request, "SIZE").as_numpy().reshape(-1))
            q = pb_utils.get_input_tensor_by_name(request, "QUALITY")
            quality = int(q.as_numpy().reshape(-1)[0]) if q is not None else 80
            self.pool.renderer(face, width, height)  # loads (or rejects) the portrait before any frame
            self.pool.check_params(params)
            return _Job(request, sender, (face, width, height), params, quality)
        except DuetError as exc:  # "<code>: <message>": the client re-raises it as the same typed error
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{exc.code}: {exc}")), flags=FINAL)
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad_face_params: {exc}")), flags=FINAL)
            return None

    def execute(self, requests):
        jobs = [j for j in (self._job(r) for r in requests) if j is not None]
        try:
            while jobs:
                for job in [j for j in jobs if j.request.is_cancelled() or j.next >= len(j.params)]:
                    jobs.remove(job)
                    job.sender.send(flags=FINAL)
                # One round: up to round_frames frames per portrait+size group, shared out among its jobs.
                groups = {}
                for job in jobs:
                    groups.setdefault(job.key, []).append(job)
                for key, members in groups.items():
                    share = max(self.round_frames // len(members), 1)
                    spans = [(job, job.next, min(job.next + share, len(job.params))) for job in members]
                    frames = self.pool.render(key, np.concatenate([job.params[a:b] for job, a, b in spans]))
                    self.frames.increment(sum(b - a for _, a, b in spans))
                    pos = 0
                    for job, a, b in spans:
                        jpegs = self.pool.encode(frames[pos : pos + b - a], job.quality)
                        pos += b - a
                        job.next = b
                        job.sender.send(
                            pb_utils.InferenceResponse(
                                output_tensors=[
                                    pb_utils.Tensor("JPEG", np.array([jpegs], dtype=np.object_)),
                                    pb_utils.Tensor("FIRST", np.array([[a]], dtype=np.int32)),
                                ]
                            )
                        )
        except Exception as exc:  # a render failure ends the batch with the error, not a hang
            pb_utils.Logger.log_error(f"face_render failed: {exc!r}")
            for job in jobs:
                job.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"face_render failed: {exc}")))
        finally:
            for job in jobs:  # left only after a failure: every request still gets its final flag
                job.sender.send(flags=FINAL)
