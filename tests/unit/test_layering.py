"""The layering the session core relies on: only the Triton adapter imports `tritonclient`, and the session
core, the pure machines and the OpenAI backend work without it (tests run them with fakes)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "orchestrator" / "models" / "triton.py"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_adapter_imports_tritonclient() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "orchestrator").rglob("*.py"))
        if p != ADAPTER and any(m.split(".")[0] == "tritonclient" for m in imported_modules(p))
    ]
    assert offenders == []
    assert any(m.startswith("tritonclient") for m in imported_modules(ADAPTER))


def test_the_session_core_loads_without_tritonclient() -> None:
    core = [
        "orchestrator.api.session_service",
        "orchestrator.session.factory",
        "orchestrator.models.openai_llm",
        "orchestrator.turns.floor",
        "orchestrator.turns.replies",
        "orchestrator.speech.gate",
    ]
    code = (
        f"import sys\nfor m in {core!r}:\n    __import__(m)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tritonclient')\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_event_dict_is_built_outside_the_api_edge() -> None:
    """Events are typed to the wire edge: outside `orchestrator/api/wire.py` no code builds a dict whose `type`
    is an event's (a constant naming an event type, or an expression: `event.type`), except the face motion
    request, which is a model input, and the REST control plane's answers (`orchestrator/api/http/`, a wire
    edge of its own: an interaction's `type`). JSON Schemas (`"type": "object"`) are not events."""
    import orchestrator.events as ev

    event_types = {c.type for c in vars(ev).values() if isinstance(c, type) and issubclass(c, ev.Event) and c.type}
    builders = []
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Dict):
                continue
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == "type":
                    values = v.elts if isinstance(v, ast.List | ast.Tuple) else [v]  # a schema's type union
                    if any(not isinstance(x, ast.Constant) or x.value in event_types for x in values):
                        builders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    # (and the WebRTC edge's SDP bodies: `{"sdp", "type": "answer"}`, and a guardrail's rule as the API shows it)
    allowed = (
        "orchestrator/intel/guardrails.py",
        "orchestrator/api/wire.py",
        "orchestrator/face/motion.py",
        "orchestrator/api/http/",
        "orchestrator/api/webrtc/",
    )
    assert [b for b in builders if not b.startswith(allowed)] == []
