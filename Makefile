# Duet — every entry point the README names. `make help` lists them.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup demo test lint typecheck unit integration e2e bench bench-turns bench-text-turn bench-pa bench-conversation \
	bench-asr bench-replies bench-echo bench-load bench-pa-speech bench-face bench-perception bench-faults \
	bench-isolation bench-api bench-priority bench-webrtc bench-knowledge bench-intel bench-judges bench-context bench-micro bench-micro-save \
	bench-soak \
	serve clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup:  ## create .venv, install Python + Debian packages, extract model files, generate gRPC code
	@bash scripts/bootstrap.sh

demo: setup  ## a spoken exchange with the shipped sample user (reply.mp4: the face), then one rendered line
	@echo "A recorded user (perf/data/samples/demo_user.wav) talks to the replica at real time:"
	@$(VENV)/bin/duet talk --audio perf/data/samples/demo_user.wav --out perf/out/demo --video --option video.size=384x384 \
	  --check || { echo "make demo: the spoken exchange failed (see above)" >&2; exit 1; }
	@echo; echo "The replica's face saying one line (voice + face, H.264/AAC):"
	@$(VENV)/bin/duet render --text "Hi, I'm Ava. I can help with appointments, bills and address changes." \
	  --emotion happiness --out perf/out/demo/hello.mp4
	@echo; echo "Floor events of the same file as fast as possible, as JSONL (the stable floor-event format):"
	@$(VENV)/bin/duet turns perf/data/samples/demo_user.wav --speed 0 --jsonl

test: setup lint typecheck unit integration e2e  ## lint, type-check, unit, integration and e2e tests

lint: setup  ## ruff (lint and format)
	@$(VENV)/bin/ruff check orchestrator clients perf tests model_repository scripts
	@$(VENV)/bin/ruff format --check orchestrator clients perf tests model_repository scripts

typecheck: setup  ## mypy --strict on orchestrator/ and clients/
	@$(VENV)/bin/mypy --strict orchestrator clients/duet perf/turns_eval.py perf/bench_face.py

unit: setup  ## pure logic, no server
	@$(PY) -m pytest -q tests/unit

integration: setup  ## real tritonserver, real models
	@$(PY) -m pytest -q tests/integration

e2e: setup  ## whole stack through the real CLI and SDK
	@$(PY) -m pytest -q tests/e2e

BENCHES := bench-turns bench-conversation bench-asr bench-replies bench-echo bench-load bench-pa bench-pa-speech bench-face \
	bench-perception bench-faults bench-isolation bench-api bench-priority bench-webrtc bench-knowledge bench-intel \
	bench-judges bench-context bench-micro bench-text-turn
bench: setup $(BENCHES)  ## every benchmark table

bench-turns: setup  ## Duet's floor model vs silence timeouts vs Smart Turn alone, on the same audio
	@$(PY) perf/bench_turns.py --split check --out perf/out/bench_turns_check.json
	@$(PY) perf/bench_turns.py --split dev --out perf/out/bench_turns_dev.json
	@$(PY) perf/data/make_real_turns.py
	@$(PY) perf/bench_turns.py --split real --out perf/out/bench_turns_real.json

bench-text-turn: setup  ## the learned text end-of-turn model vs the lexical rules: held-out AUC (a fit, not shipped)
	@$(PY) perf/train_text_turn.py --out perf/out/text_turn_bench.json

bench-pa: setup  ## perf_analyzer on vad / turn / floor at concurrency 1..32
	@bash perf/pa_floor.sh

bench-conversation: setup  ## response latency, speculation, barge-in: speculation on vs off, held-out calls
	@$(PY) perf/bench_conversation.py --split check --systems duet,duet-nospec
	@$(PY) perf/bench_conversation.py --split check --systems duet --echo

bench-asr: setup  ## transcripts of user turns: WER per prompt (recogniser alone), then duet talk (duplicates, leaks)
	@$(PY) perf/bench_asr.py --view offline --split check --out perf/out/asr_offline_check.json
	@$(PY) perf/bench_asr.py --view e2e --split check --out perf/out/asr_e2e_check.json

bench-replies: setup  ## reply quality + LLM latency per candidate model, both LLM backends, held-out calls
	@$(PY) perf/bench_replies.py --split check --seeds 1,2,3 --out perf/out/bench_replies_check.json

bench-echo: setup  ## echo canceller vs muting the mic vs nothing, on simulated speaker bleed
	@$(PY) perf/bench_echo.py

bench-load: setup  ## how many simultaneous real-time conversations one machine carries
	@$(PY) perf/session_load.py

bench-pa-speech: setup  ## perf_analyzer on asr, and streaming llm / tts
	@bash perf/pa_asr.sh
	@bash perf/pa_llm.sh
	@bash perf/pa_tts.sh

bench-face: setup  ## face renderer speed (render vs OpenCV remap), A/V sync, emotions, contact sheet + MP4
	@$(PY) perf/bench_face.py

bench-perception: setup  ## perception freshness through the stack, accuracy tables, cost; perf_analyzer
	@$(PY) perf/bench_perception.py
	@bash perf/pa_perception.sh

bench-faults: setup  ## kill the llm, tts and asr stubs mid-session: time to recovery, turns lost (docs/robustness.md)
	@$(PY) perf/bench_faults.py --repeats 2

# Not in BENCHES: it runs for half an hour (`make bench-soak SOAK_MINUTES=10` for a shorter one).
SOAK_MINUTES ?= 30
SOAK_SESSIONS ?= 1
bench-soak: setup  ## a 30-minute soak at one call: memory growth, leaked tasks and fds, latency drift (docs/robustness.md)
	@$(PY) perf/soak.py --minutes $(SOAK_MINUTES) --sessions $(SOAK_SESSIONS) --out perf/out/soak.json

bench-isolation: setup  ## a healthy call alone vs beside 50 hostile streams: latency, how each hostile one ended
	@$(PY) perf/bench_isolation.py --hostile 50

bench-api: setup  ## REST API latency under load (wrk), POST to greeting audio, webhooks; SQLite and PostgreSQL
	@$(PY) perf/bench_api.py

bench-priority: setup  ## priority tier vs standard: llm and asr latency while standard-tier load saturates them
	@$(PY) perf/bench_priority.py

bench-webrtc: setup  ## browser calls: latency at the page vs duet talk (gRPC), lip sync, CPU per call, calls that fit
	@$(PY) perf/bench_webrtc.py --out perf/out/bench_webrtc.json

bench-judges: setup  ## objectives/guardrail/tool judges: valid JSON, accuracy, latency per local model (grammar vs free)
	@$(PY) perf/bench_judges.py --out perf/out/bench_judges.json

bench-context: setup  ## a grounded reply's context: whole chunks vs their best sentences (tokens, fact kept)
	@$(PY) perf/bench_context.py

bench-knowledge: setup  ## knowledge search: recall@1/@5, MRR per strategy and mode, latency at 1,000 chunks (served embed)
	@$(PY) perf/bench_knowledge.py --out perf/out/knowledge/bench_knowledge.json

bench-intel: setup  ## grounded answers with vs without documents, latency added, guardrails, objectives, tools, memories
	@$(PY) perf/bench_intel.py --out perf/out/intel/bench_intel.json

# Micro-benchmarks (pytest-benchmark) of the hot pure functions; docs/micro-benchmarks.md reads the table.
# `bench_*.py` files are collected only here (python_files); `make test`/`make unit` never see them. One BLAS
# thread, as the Triton launcher runs the models.
MICRO_BASELINE := perf/micro/baseline
BENCH_MICRO := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest perf/micro -q -p no:cacheprovider -o python_files='bench_*.py' \
	--benchmark-group-by=group --benchmark-sort=name --benchmark-columns=median,mean,iqr,min,rounds \
	--benchmark-time-unit=us --benchmark-warmup=on --benchmark-warmup-iterations=200 \
	--benchmark-min-rounds=25 --benchmark-max-time=0.5

bench-micro: setup  ## micro-benchmarks of the hot pure functions, against the checked-in baseline
	@$(BENCH_MICRO) --benchmark-storage=file://$(MICRO_BASELINE) --benchmark-compare=0001 $(BENCH_MICRO_ARGS)

bench-micro-save: setup  ## re-measure and replace the micro-benchmark baseline (after an intended speed change)
	@rm -rf $(MICRO_BASELINE).new
	@$(BENCH_MICRO) --benchmark-storage=file://$(MICRO_BASELINE).new --benchmark-save=baseline $(BENCH_MICRO_ARGS)
	@$(PY) perf/micro/scrub_baseline.py $(MICRO_BASELINE).new
	@rm -rf $(MICRO_BASELINE) && mv $(MICRO_BASELINE).new $(MICRO_BASELINE) && ls $(MICRO_BASELINE)/*/*.json

serve: setup  ## run the stack in the foreground
	@$(VENV)/bin/duet serve

clean:  ## remove the venv, caches and extracted model files
	rm -rf $(VENV) .cache perf/out clients/duet/proto model_repository/*/1/*.onnx faces/astronaut.png \
	  model_repository/asr/1/whisper-base model_repository/llm/1/*.gguf model_repository/tts/1/voices
