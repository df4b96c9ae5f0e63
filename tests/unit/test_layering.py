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
    """Events are typed to the wire edge: outside `orchestrator/api/wire.py` no code builds a dict with a
    `type` key (an event in dict form), except the face motion request, which is a model input, and the REST
    control plane's answers (`orchestrator/api/http/`, a wire edge of its own: an interaction's `type`)."""
    builders = []
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "type" for k in node.keys):
                builders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    # (and the WebRTC edge's SDP bodies: `{"sdp", "type": "answer"}`)
    allowed = (
        "orchestrator/api/wire.py",
        "orchestrator/face/motion.py",
        "orchestrator/api/http/",
        "orchestrator/api/webrtc/",
    )
    assert [b for b in builders if not b.startswith(allowed)] == []
