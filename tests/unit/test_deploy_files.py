"""The images and the compose deployment (deploy/): what can be checked without Docker.

The compose file parses and builds from files that exist; every image is pinned; the orchestrators' ports and
environment are real settings (loaded into the real `Settings`) that agree with Prometheus's targets, Triton's
address and the protected mode; the dashboard asks only for metrics the orchestrator registers or Triton documents;
the inference image starts Triton with the embedded launcher's flags; the lock agrees with pyproject.toml; nothing
names a registry host. With a `docker` CLI that has the compose plugin, `docker compose config` runs too.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from orchestrator.api.session_service import is_loopback
from orchestrator.config import Settings, TritonSettings, load_settings
from orchestrator.models.discovery import DnsName, parse_dns
from orchestrator.telemetry import Telemetry

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
DOCKERFILES = {"triton": DEPLOY / "triton" / "Dockerfile", "orchestrator": DEPLOY / "orchestrator" / "Dockerfile"}
DOCS = REPO / "docs" / "deploy.md"
ORCHESTRATORS = ("orchestrator-1", "orchestrator-2")
SERVICES = {"triton", *ORCHESTRATORS, "postgres", "prometheus", "grafana"}
# Triton's own metrics (Triton's metrics documentation: inference request, latency, pending and GPU/CPU families).
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_request_summary_us",
    "nv_inference_queue_summary_us",
    "nv_inference_compute_input_summary_us",
    "nv_inference_compute_infer_summary_us",
    "nv_inference_compute_output_summary_us",
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
    "nv_cpu_utilization",
    "nv_cpu_memory_total_bytes",
    "nv_cpu_memory_used_bytes",
}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|STORE__URL)$")
BUILD_TOOLS = re.compile(r"\b(build-essential|cmake|gcc|g\+\+|make|[\w.+-]+-dev)\b")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "::1"}


# ---- helpers ------------------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the `<<` merge keys as compose does
    assert isinstance(data, dict)
    return data


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (the error form needs VAR: a placeholder here)."""
    env = env or {}

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if name in env:
            return env[name]
        if op == ":-":
            return arg
        return f"<{name}>"

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def env_file(name: str) -> dict[str, str]:
    """The committed template of an env file (NAME=value lines, comments skipped)."""
    path = COMPOSE_DIR / f"{name}.example"
    assert path.is_file(), f"{name} has no committed template {path.name}"
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV NAME=value pairs of the final stage (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    final = re.split(r"^FROM\s", text, flags=re.M)[-1]
    out: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            out.update(dict(pair.split("=", 1) for pair in line[4:].split()))
    return out


def setting_env_names(cls: Any = Settings, prefix: str = "DUET_") -> set[str]:
    """Every `DUET_*` variable load_settings reads (one per leaf of the settings tree)."""
    names: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}".upper()
        if dataclasses.is_dataclass(hints[f.name]):
            names |= setting_env_names(hints[f.name], f"{name}__")
        else:
            names.add(name)
    return names


def orchestrator_env(service: str) -> dict[str, str]:
    """What the orchestrator process sees: the image's ENV, then the env file, then compose's `environment`."""
    spec = compose()["services"][service]
    env = dockerfile_env(DOCKERFILES["orchestrator"])
    env.update(env_file(spec["env_file"]))
    env.update({k: interpolate(str(v)) for k, v in spec["environment"].items()})
    return env


def orchestrator_settings(service: str) -> Settings:
    return load_settings(path="", env={k: v for k, v in orchestrator_env(service).items() if k.startswith("DUET_")})


def seconds(duration: str) -> float:
    """A compose duration such as `45s`, `1m30s` or `20m`."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, ranges and grouping removed)."""
    keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\b(\s*\()?", expr):
        if m.group(2) is None and m.group(1) not in keywords:  # a name followed by "(" is a function
            names.add(m.group(1))
    return names


def telemetry_sample_names() -> set[str]:
    """Every sample name the orchestrator's registry exposes, by each family's type (a labelled counter has no
    sample before its first label: its names come from its family)."""
    t = Telemetry()
    t.watch_healing(lambda: {("reloaded", "llm"): 1}, lambda: 0)
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names = set()
    for family in t.registry.collect():
        names |= {family.name + suffix for suffix in suffixes[family.type]}
        names |= {s.name for s in family.samples}
    return names


def files_under(folder: Path) -> Iterator[Path]:
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".tgz"}:
            yield p


def dockerfile_args(path: Path) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for m in re.finditer(r"^ARG\s+(\w+)(?:=(\S*))?", path.read_text(), flags=re.M):
        out.setdefault(m.group(1), m.group(2))
    return out


def stages(path: Path) -> list[str]:
    """The Dockerfile's stages, each from its FROM line to the next (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return ["FROM " + s for s in re.split(r"^FROM\s", text, flags=re.M)[1:]]


# ---- compose ------------------------------------------------------------------------------------------------------


def test_compose_has_the_services_and_builds_from_files_that_exist() -> None:
    services = compose()["services"]
    assert set(services) == SERVICES
    built = {name: spec["build"] for name, spec in services.items() if "build" in spec}
    assert set(built) == {"triton", *ORCHESTRATORS}
    for name, build in built.items():
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context == REPO, f"{name} builds from the repository root"
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        assert dockerfile.with_name(dockerfile.name + ".dockerignore").is_file(), f"{name}: no .dockerignore"
    assert built["triton"]["dockerfile"] == "deploy/triton/Dockerfile"
    for name in ORCHESTRATORS:
        assert built[name]["dockerfile"] == "deploy/orchestrator/Dockerfile"
    # every bind mount of the repository's files exists
    for name, spec in services.items():
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in compose()["volumes"], f"{name}: volume {source} is not declared"


def test_every_image_is_pinned() -> None:
    project_version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, spec in compose()["services"].items():
        image = spec.get("image", "")
        assert image, f"{name} has no image name"
        ref, _, tag = image.rpartition(":")
        assert ref and tag and "/" not in tag, f"{name}: {image!r} carries no tag"
        assert tag != "latest", f"{name}: {image!r} is not pinned"
        if "build" in spec:
            assert tag == project_version, f"{name}: the built image is tagged {tag}, the project is {project_version}"
        else:
            # an exact release: major.minor.patch, or major.minor where that is the release (PostgreSQL)
            assert re.match(r"v?\d+\.\d+(\.\d+)?(-|$)", tag), f"{name}: {image!r} names no exact version"
    for path in DOCKERFILES.values():
        args = dockerfile_args(path)
        for stage in stages(path):
            base = stage.split()[1]
            m = re.fullmatch(r"\$\{(\w+)\}", base)
            if m is None:
                assert base in {s.split()[3] for s in stages(path) if " AS " in s}, f"{path}: FROM {base} unpinned"
                continue
            default = args[m.group(1)]
            if default:  # a pinned default: an exact version, never `latest`
                assert re.search(r":\d+\.\d+\.\d+", default) and "latest" not in default, f"{path}: {default}"


def test_triton_service_reserves_the_gpu_and_gets_its_base_image_from_the_operator() -> None:
    triton = compose()["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "TRITON_IMAGE" in triton["build"]["args"]
    assert ":?" in triton["build"]["args"]["TRITON_IMAGE"], "an unset TRITON_IMAGE must stop compose"
    assert triton["shm_size"], "the Python backend needs more than the default 64 MB of /dev/shm"
    # `docker compose up --scale triton=N` refuses a fixed container name, and N containers cannot publish one port
    assert "container_name" not in triton and "ports" not in triton


@pytest.mark.parametrize("service", ORCHESTRATORS)
def test_orchestrator_env_and_ports_are_real_settings(service: str) -> None:
    env = orchestrator_env(service)
    unknown = {k for k in env if k.startswith("DUET_")} - setting_env_names()
    assert not unknown, f"{service}: {sorted(unknown)} are no settings (load_settings would ignore them)"
    settings = orchestrator_settings(service)
    serve = load_module(DEPLOY / "triton" / "serve.py")
    spec = compose()["services"][service]
    # Triton by its compose name on the inference image's gRPC port: every container of that name (a scaled one)
    assert settings.triton.url == f"dns:///triton:{serve.GRPC_PORT}"
    assert parse_dns(settings.triton.url) == DnsName("triton", serve.GRPC_PORT)
    # PostgreSQL by its compose name, from the env file (the password is not in compose.yaml)
    assert settings.store.url.startswith("postgresql://") and "@postgres:5432/" in settings.store.url
    assert settings.store.url.rsplit("/", 1)[1] == compose()["services"]["postgres"]["environment"]["POSTGRES_DB"]
    # bound beyond loopback only in protected mode (orchestrator/app.py refuses otherwise)
    assert not is_loopback(settings.server.host) and settings.api.enabled
    # published: exactly the gRPC and HTTP ports it listens on, on the same numbers (join.grpc names its own port)
    published = {(p["target"], int(p["published"])) for p in spec["ports"]}
    assert published == {(settings.server.port, settings.server.port), (settings.api.http_port, settings.api.http_port)}
    assert settings.metrics.port not in {t for t, _ in published}, "/metrics carries no key: never published"
    assert settings.api.public_url.endswith(f":{settings.api.http_port}")
    for p in spec["ports"]:
        assert interpolate(p["host_ip"]) == "127.0.0.1", "published on loopback unless the operator says otherwise"
    # the healthcheck probes a route the API serves, on the port the setting's own variable holds
    probe = " ".join(spec["healthcheck"]["test"])
    assert "DUET_API__HTTP_PORT" in probe
    openapi = yaml.safe_load((REPO / "orchestrator" / "api" / "http" / "openapi.yaml").read_text())
    (path,) = re.findall(r"/v1/[\w/.]+", probe)
    assert path in openapi["paths"] and "get" in openapi["paths"][path], f"{service} probes {path}: no such route"
    # several orchestrators on one store: each names itself and where the other reaches its API
    assert settings.api.instance_id == service
    assert settings.api.internal_url == f"http://{service}:{settings.api.http_port}"
    # compose waits longer than the drain before it kills
    assert seconds(spec["stop_grace_period"]) > settings.server.drain_timeout_s
    # secrets only through the env file
    assert not [k for k in spec["environment"] if SECRET_NAME.search(k)]
    assert SECRET_NAME.search("DUET_STORE__URL") and "DUET_STORE__URL" in env_file(spec["env_file"])


def test_orchestrators_do_not_collide_and_start_one_after_the_other() -> None:
    ports = [
        p for s in ORCHESTRATORS for p in (orchestrator_settings(s).server.port, orchestrator_settings(s).api.http_port)
    ]
    assert len(ports) == len(set(ports))
    assert "orchestrator-1" in compose()["services"]["orchestrator-2"]["depends_on"]  # migrations take no lock
    for name in ORCHESTRATORS:
        depends = compose()["services"][name]["depends_on"]
        assert depends["triton"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"


def test_the_image_defaults_alone_are_protected_mode() -> None:
    env = dockerfile_env(DOCKERFILES["orchestrator"])
    settings = load_settings(path="", env={k: v for k, v in env.items() if k.startswith("DUET_")})
    assert not is_loopback(settings.server.host) and settings.api.enabled
    assert {k for k in env if k.startswith("DUET_")} <= setting_env_names()


def test_secrets_live_in_uncommitted_env_files() -> None:
    ignored = [line.strip() for line in (COMPOSE_DIR / ".gitignore").read_text().splitlines() if line.strip()]
    for name, spec in compose()["services"].items():
        for key in spec.get("environment", {}):
            assert not SECRET_NAME.search(key), f"{name}: {key} belongs in an env file"
        if "env_file" in spec:
            assert any(fnmatch.fnmatch(spec["env_file"], pat) for pat in ignored if not pat.startswith("#"))
            assert not any(fnmatch.fnmatch(spec["env_file"] + ".example", pat) for pat in ignored)
            env_file(spec["env_file"])  # the template exists
    assert "POSTGRES_PASSWORD" in env_file(compose()["services"]["postgres"]["env_file"])
    assert "GF_SECURITY_ADMIN_PASSWORD" in env_file(compose()["services"]["grafana"]["env_file"])


# ---- Prometheus and Grafana ---------------------------------------------------------------------------------------


def scrape_targets() -> dict[str, set[str]]:
    """host:port per job, from static targets and from DNS lookups (`dns_sd_configs` of type A: name:port)."""
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    jobs: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        targets = jobs.setdefault(job["job_name"], set())
        targets |= {t for sc in job.get("static_configs", []) for t in sc["targets"]}
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A" and "port" in sd, "an A lookup needs the port; SRV records are not in compose"
            targets |= {f"{name}:{sd['port']}" for name in sd["names"]}
    return jobs


def yaml_scrape_jobs() -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())[
        "scrape_configs"
    ]
    return jobs


def test_prometheus_scrapes_every_orchestrator_and_triton_where_they_listen() -> None:
    jobs = scrape_targets()
    serve = load_module(DEPLOY / "triton" / "serve.py")
    assert jobs["triton"] == {f"triton:{serve.METRICS_PORT}"}
    # every replica of a scaled Triton, not the one the name happens to give first
    assert "static_configs" not in next(j for j in yaml_scrape_jobs() if j["job_name"] == "triton")
    assert jobs["duet-orchestrator"] == {f"{s}:{orchestrator_settings(s).metrics.port}" for s in ORCHESTRATORS}
    for s in ORCHESTRATORS:
        assert not is_loopback(orchestrator_settings(s).metrics.host), "a loopback /metrics cannot be scraped"
    for targets in jobs.values():
        assert {t.split(":")[0] for t in targets} <= SERVICES
    mounted = [v for v in compose()["services"]["prometheus"]["volumes"] if "prometheus.yml" in v]
    assert mounted == ["./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"]


def dashboard() -> dict[str, Any]:
    data = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "duet.json").read_text())
    assert isinstance(data, dict)
    return data


def test_promql_metric_names_are_parsed() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, stage) (rate(duet_stage_latency_seconds_bucket{job="x"}[5m])))'
    assert promql_metrics(expr) == {"duet_stage_latency_seconds_bucket"}
    expr = "sum by (model) (rate(a_us[$__rate_interval])) / sum by (model) (rate(b_total[1m]) > 0) / 1000"
    assert promql_metrics(expr) == {"a_us", "b_total"}


def test_dashboard_asks_only_for_real_metrics_and_shows_what_the_issue_asks() -> None:
    known = telemetry_sample_names() | TRITON_METRICS
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    used = set().union(*(promql_metrics(e) for e in exprs))
    assert used <= known, f"the dashboard asks for metrics nothing exports: {sorted(used - known)}"
    assert {
        "duet_sessions_open",
        "duet_stage_latency_seconds_bucket",
        "duet_drops_total",
        "duet_refusals_total",
        "duet_event_loop_lag_seconds_bucket",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_request_success",
    } <= used
    stage = [e for e in exprs if "duet_stage_latency_seconds_bucket" in e]
    assert stage and all("histogram_quantile" in e and "stage" in e for e in stage)
    triton = [e for e in exprs if "nv_inference_queue_duration_us" in e or "compute_infer" in e]
    assert triton and all("by (model)" in e for e in triton)


def test_grafana_provisioning_matches_the_dashboard_and_compose() -> None:
    ds = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    uids = {p["datasource"]["uid"] for p in dashboard()["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
    providers = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/dashboards/duet.yaml").read_text())["providers"]
    mounts = dict(v.split(":")[:2][::-1] for v in compose()["services"]["grafana"]["volumes"])
    for provider in providers:
        assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert "./grafana/provisioning" in mounts.values()
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


# ---- the images ---------------------------------------------------------------------------------------------------


def test_triton_entrypoint_keeps_the_launchers_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from orchestrator.models.launcher import EmbeddedTriton

    monkeypatch.setattr("tempfile.mkdtemp", lambda prefix="": str(tmp_path))  # the launcher's work folder
    serve = load_module(DEPLOY / "triton" / "serve.py")
    settings = serve.container_settings(TritonSettings())
    theirs = EmbeddedTriton(settings).command(tmp_path / "backends")
    ours: list[str] = serve.command(theirs, gpu=True, extra=["--log-info=true"])

    def flag(args: list[str]) -> dict[str, str]:
        return {a.split("=", 1)[0]: a for a in args[1:]}

    rewritten = {k for k in flag(theirs) if flag(theirs)[k] != flag(ours).get(k)}
    assert rewritten == {
        "--backend-directory",
        "--cache-directory",
        "--http-address",
        "--grpc-address",
        "--metrics-address",
        "--allow-gpu-metrics",
    }
    assert [a for a in theirs if a.startswith("--load-model=")] == [a for a in ours if a.startswith("--load-model=")]
    assert [a.split("=", 1)[1] for a in ours if a.startswith("--load-model=")] == list(TritonSettings().models)
    assert ours[0] == "/opt/tritonserver/bin/tritonserver"
    assert f"--model-repository={REPO / 'model_repository'}" in ours  # the embedded default's repository
    assert f"--grpc-port={serve.GRPC_PORT}" in ours and f"--metrics-port={serve.METRICS_PORT}" in ours
    assert {"--metrics-config=summary_latencies=true", "--allow-metrics=true", "--allow-gpu-metrics=true"} <= set(ours)
    assert ours[-1] == "--log-info=true"
    assert "--allow-gpu-metrics=false" in serve.command(theirs, gpu=False)
    with pytest.raises(SystemExit):  # a launcher that stops passing a flag the image rewrites is caught
        serve.command([a for a in theirs if not a.startswith("--cache-directory")], gpu=True)


def test_dockerfiles_final_stages_are_small_and_non_root() -> None:
    for name, path in DOCKERFILES.items():
        all_stages = stages(path)
        assert len(all_stages) >= 2, f"{name}: not multi-stage"
        final = all_stages[-1]
        assert " AS " not in final.splitlines()[0]
        installs = " ".join(re.findall(r"apt-get install ([^&]*)", final))
        assert not BUILD_TOOLS.search(installs), f"{name}: build tools in the final stage: {installs}"
        users = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
        assert users and users[-1] not in {"root", "0"}, f"{name}: runs as root"
        assert "PIP_CONSTRAINT=/opt/duet/deploy/constraints.txt" in path.read_text(), f"{name}: not built pinned"
    triton = DOCKERFILES["triton"].read_text()
    assert "bash scripts/bootstrap.sh" in triton, "the model repository comes from the project's own setup"
    assert "/opt/tritonserver/TRITON_VERSION" in triton
    assert 'ENTRYPOINT ["/opt/duet/.venv/bin/python", "/opt/duet/deploy/triton/serve.py"]' in triton
    assert 'ENTRYPOINT ["duet", "serve"]' in DOCKERFILES["orchestrator"].read_text()


def test_dockerfile_args_without_defaults_are_documented() -> None:
    docs = DOCS.read_text()
    for path in DOCKERFILES.values():
        for name, default in dockerfile_args(path).items():
            assert default is not None or f"`{name}`" in docs, f"{path}: ARG {name} has no default and no docs"
    assert "24.10" in docs and "-py3" in docs


def test_dockerignore_leaves_out_what_setup_makes_and_keeps_what_the_builds_copy() -> None:
    gitignore = [line.strip().rstrip("/") for line in (REPO / ".gitignore").read_text().splitlines()]
    for path in DOCKERFILES.values():
        rules = [
            line.strip()
            for line in path.with_name("Dockerfile.dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        kept = [r[1:] for r in rules if r.startswith("!")]
        for folder in kept:
            assert (REPO / folder).exists(), f"{path}: {folder} does not exist"
            generated = [g for g in gitignore if g.startswith(f"{folder}/")]
            missing = [g for g in generated if g not in rules]
            assert not missing, f"{path}.dockerignore lets in what setup makes: {missing}"
        # every repository file the Dockerfile names by path is let in
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        for ref in re.findall(r"(?:deploy|scripts)/[\w./-]+\.(?:sha256|py|txt|sh)\b", code):
            assert any(ref == k or ref.startswith(f"{k}/") for k in kept), f"{path}: {ref} is ignored"
            assert (REPO / ref).is_file(), f"{path}: {ref} is missing"


def test_constraints_agree_with_pyproject() -> None:
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{name} is not pinned in deploy/constraints.txt (run deploy/lock.py)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {spec}"
    assert "duet" not in pins and "pip" not in pins and "setuptools" not in pins


# ---- no registry host ----------------------------------------------------------------------------------------------


def test_no_file_in_deploy_names_a_registry_host() -> None:
    for path in files_under(DEPLOY):
        text = path.read_text(errors="replace")
        for host in re.findall(r"\b[a-z][a-z0-9+.-]*://(?:[^@/\s]*@)?([^/\s\"'}:]+)", text):
            if any(c in host for c in "{$%"):
                continue  # a template or a variable: the operator's value
            # a single-label name (a service, a placeholder like `db-host`) or a cluster-internal one names no
            # registry: those have a dotted domain
            local = "." not in host or host in LOCAL_HOSTS or host.endswith((".svc", ".svc.cluster.local"))
            ok = local or host.endswith((".example", ".example.org", ".example.com"))
            assert ok, f"{path.relative_to(REPO)} names the host {host}"
        assert not re.search(r"--(extra-)?index-url|PIP_(EXTRA_)?INDEX_URL", text), f"{path}: a package index"
        if path.name == "Dockerfile" or path.name.endswith(".Dockerfile"):
            refs = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
            refs += [v for v in dockerfile_args(path).values() if v and ":" in v]
        elif path.suffix in {".yaml", ".yml"}:
            refs = re.findall(r"^\s*image:\s*[\"']?([^\s\"'#]+)", text, flags=re.M)
        else:
            refs = []
        for ref in refs:
            first = ref.split("/", 1)[0]
            if "/" in ref and "{" not in ref:
                assert "." not in first and ":" not in first and first != "localhost", f"{path}: {ref} names a registry"
    # in the files of this issue, no domain name at all beyond the placeholders
    for path in [
        *files_under(COMPOSE_DIR),
        *DOCKERFILES.values(),
        *(p.with_name("Dockerfile.dockerignore") for p in DOCKERFILES.values()),
    ]:
        domains = re.findall(r"\b(?:[a-z0-9-]+\.)+(?:io|com|org|net|dev|cloud|ai)\b", path.read_text())
        assert not domains, f"{path.relative_to(REPO)} names {domains}"


# ---- with Docker, if it is here -----------------------------------------------------------------------------------


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode:
        pytest.skip("no docker CLI with the compose plugin here (the checks above need neither)")
    # a copy of deploy/compose with its env files made from the templates, beside the real Dockerfiles' folders
    work = tmp_path / "deploy" / "compose"
    shutil.copytree(COMPOSE_DIR, work)
    for name in DOCKERFILES:
        (tmp_path / "deploy" / name).symlink_to(DEPLOY / name)
    for example in work.glob("*.env.example"):
        shutil.copy(example, work / example.name.removesuffix(".example"))
    proc = subprocess.run(
        [docker, "compose", "-f", str(work / "compose.yaml"), "config", "--quiet"],
        env={"PATH": "/usr/bin:/bin", "TRITON_IMAGE": "triton-base:24.10-py3"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
