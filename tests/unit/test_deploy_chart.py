"""The Helm chart (deploy/helm/duet): lints clean, renders in each profile, every rendered object validates
strictly against the Kubernetes schemas, and the parts that matter behave (GPU only in the GPU profile, Triton's
health probes, the orchestrator's Triton address, secrets only by reference, a real metric behind the HPA,
disruption budgets, resource requests, drain, Triton as a StatefulSet whose pods the orchestrators dial one by
one). Offline: helm-python-sdk renders with Helm's Go SDK in-process, kubernetes-validate holds the schemas."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import re
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from orchestrator.config import Settings, TritonSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "duet"
K8S_VERSION = "1.33"  # schemas bundled with kubernetes-validate; also the version `helm lint` checks against
RELEASE, NAMESPACE = "duet", "voice"
ORCH, TRITON = f"{RELEASE}-orchestrator", f"{RELEASE}-triton"

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "cpu-noautoscale-ingress": {
        "triton": {"gpu": {"enabled": False}},
        "autoscaling": {"enabled": False},
        "ingress": {"enabled": True, "host": "duet.example.internal", "tlsSecretName": "duet-tls"},
    },
    "scale-triton": {
        "triton": {"replicas": 2, "endpoints": "perPod"},
        "autoscaling": {"triton": {"enabled": True, "minReplicas": 2, "modelSelector": {"model": "llm"}}},
        "orchestrator": {
            "secretEnv": [{"name": "OPENAI_API_KEY", "secretName": "duet-llm", "key": "api-key"}],
            "extraEnv": [{"name": "DUET_LLM__OPENAI_API_KEY_ENV", "value": "OPENAI_API_KEY"}],
        },
    },
    # Triton's HPA asked for but autoscaling off: no HPA, so `replicas` pods (not maxReplicas); another DNS domain
    "triton-pods-fixed": {
        "clusterDomain": "k8s.example.internal",
        "triton": {"replicas": 3, "endpoints": "perPod"},
        "autoscaling": {"enabled": False, "triton": {"enabled": True, "maxReplicas": 6}},
    },
    "single-triton-address": {"triton": {"replicas": 2, "endpoints": "service"}},
}
# Triton pods the orchestrators get an address of, in the profiles that give them one per pod (`endpoints: perPod`):
# `triton.replicas`, or the Triton HPA's maxReplicas when there is one
TRITON_PODS = {"scale-triton": 4, "triton-pods-fixed": 3}
DNS_PROFILES = ("default", "cpu-noautoscale-ingress")  # `endpoints: dns`, the default
LONG_RELEASE = "customer-support-voice-agents-production-europe-west-1"  # full name prefix of 58 characters


def _load(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as exc:  # an ImportError, or the native library failing to load at import
        pytest.fail(f"cannot import {module} ({package}, a pinned dev dependency: `make setup`): {exc!r}")


@functools.cache
def helm() -> Any:
    """helm_python with its native library (libhelm_c) loaded; a failure FAILS the test, it never skips."""
    h = _load("helm_python", "helm-python-sdk")
    try:
        h.helm_c_version()
    except Exception as exc:
        pytest.fail(f"helm_python cannot load its native library libhelm_c: {exc!r}")
    return h


@functools.cache
def _render(values: str, release: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    h = helm()
    with h.Chart.load(CHART) as chart:
        out = chart.render(json.loads(values), name=release, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return tuple(docs)


def render(profile: str, release: str = RELEASE) -> list[tuple[str, dict[str, Any]]]:
    return list(_render(json.dumps(PROFILES[profile], sort_keys=True), release))


def objects(profile: str, kind: str, release: str = RELEASE) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in render(profile, release) if d["kind"] == kind}


def workloads(profile: str) -> dict[str, dict[str, Any]]:
    """The orchestrator Deployment and the Triton StatefulSet, by name."""
    return {**objects(profile, "Deployment"), **objects(profile, "StatefulSet")}


def pod_spec(profile: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = workloads(profile)[name]["spec"]["template"]["spec"]
    return spec


def container(profile: str, name: str) -> dict[str, Any]:
    (c,) = pod_spec(profile, name)["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


# ---- 1. lint -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_chart_lints_clean(profile: str) -> None:
    report = helm().lint(CHART, PROFILES[profile], strict=True, kube_version=f"v{K8S_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 is info ("icon is recommended")
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not problems, (report["errors"], problems)


def test_chart_metadata_follows_the_package() -> None:
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    with helm().Chart.load(CHART) as chart:
        meta = chart.metadata
    assert (meta["apiVersion"], meta["name"], meta["version"]) == ("v2", "duet", "0.1.0")
    assert meta["appVersion"] == version


# ---- 2. every rendered object validates strictly ---------------------------------------------------------------


def _invalid(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """What fails strict validation against the Kubernetes schemas, one line per object."""
    kv = _load("kubernetes_validate", "kubernetes-validate")
    errors = []
    for path, doc in docs:
        where = f"{path} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            errors.append(f"{where}: {'.'.join(map(str, exc.path)) or '(root)'}: {exc.message}")
        except (kv.SchemaNotFoundError, kv.InvalidSchemaError) as exc:
            errors.append(f"{where}: {exc.message}")
    return errors


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_rendered_objects_validate_strictly(profile: str) -> None:
    docs = render(profile)
    assert len(docs) >= 7
    errors = _invalid(docs)
    assert not errors, f"{len(errors)} invalid against Kubernetes {K8S_VERSION} (strict):\n" + "\n".join(errors)


@pytest.mark.parametrize(("kind", "name"), [("Deployment", ORCH), ("StatefulSet", TRITON)])
def test_strict_validation_catches_an_unknown_field(kind: str, name: str) -> None:
    """The check above is not vacuous: a misspelt field fails it."""
    (path, workload) = next((p, d) for p, d in render("default") if d["kind"] == kind and d["metadata"]["name"] == name)
    assert not _invalid([(path, workload)])
    workload = {**workload, "spec": {**workload["spec"], "replica": 3}}
    assert _invalid([(path, workload)])


# ---- 3. behaviour ----------------------------------------------------------------------------------------------


def _gpu_requested(c: dict[str, Any]) -> bool:
    res = c.get("resources", {})
    return any("nvidia.com/gpu" in res.get(part, {}) for part in ("requests", "limits"))


def test_triton_requests_a_gpu_only_in_the_gpu_profile() -> None:
    gpu = container("default", TRITON)
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--allow-gpu-metrics=true" in gpu["args"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod_spec("default", TRITON).get("tolerations", []))
    cpu = container("cpu-noautoscale-ingress", TRITON)
    assert not _gpu_requested(cpu)
    assert "--allow-gpu-metrics=false" in cpu["args"]
    assert not any("nvidia" in str(t) for t in pod_spec("cpu-noautoscale-ingress", TRITON).get("tolerations", []))
    for profile in PROFILES:  # the orchestrator never takes a GPU
        spec = pod_spec(profile, ORCH)
        assert not any(_gpu_requested(c) for c in spec["containers"] + spec.get("initContainers", []))


def test_triton_probes_use_its_health_endpoints() -> None:
    c = container("default", TRITON)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900  # models load slowly
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert ports[c[probe]["httpGet"]["port"]] == 8000


def test_triton_serves_the_repository_models_strictly() -> None:
    args = container("default", TRITON)["args"]
    assert "--model-repository=/opt/duet/model_repository" in args
    assert "--strict-readiness=true" in args
    loaded = [a.removeprefix("--load-model=") for a in args if a.startswith("--load-model=")]
    assert sorted(loaded) == sorted(TritonSettings().models)
    for model in loaded:
        assert (REPO / "model_repository" / model / "config.pbtxt").is_file(), model
    env = env_of(container("default", ORCH))
    assert env["DUET_TRITON__MODELS"]["value"].split(",") == loaded  # both sides serve/await the same models


@pytest.mark.parametrize("profile", ["default", "single-triton-address"])
def test_the_triton_service_serves_readiness_and_the_single_address(profile: str) -> None:
    service = objects(profile, "Service")[TRITON]
    assert service["spec"]["type"] == "ClusterIP" and "clusterIP" not in service["spec"]
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    triton_ports = {p["name"]: p["containerPort"] for p in container(profile, TRITON)["ports"]}
    assert triton_ports[grpc["targetPort"]] == 8001
    triton_labels = objects(profile, "StatefulSet")[TRITON]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= triton_labels.items()
    # the orchestrators wait for any Triton pod to be ready through the Service
    init = {c["name"]: c for c in pod_spec(profile, ORCH)["initContainers"]}["wait-for-triton"]
    assert env_of(init)["TRITON_READY_URL"]["value"] == f"http://{TRITON}.{NAMESPACE}.svc:8000/v2/health/ready"
    url = env_of(container(profile, ORCH))["DUET_TRITON__URL"]["value"]
    if profile == "single-triton-address":  # endpoints: service: the Service's one gRPC host:port, no scheme
        assert url == f"{TRITON}.{NAMESPACE}.svc:{grpc['port']}"
    else:
        assert f"{TRITON}.{NAMESPACE}.svc:" not in url


# ---- Triton pods, each dialed on its own -------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_triton_is_a_statefulset_governed_by_a_headless_service(profile: str) -> None:
    assert TRITON not in objects(profile, "Deployment")
    sts = objects(profile, "StatefulSet")[TRITON]
    assert not _invalid([("triton-statefulset.yaml", sts)])
    spec = sts["spec"]
    assert spec["serviceName"] == f"{TRITON}-pods"
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert "strategy" not in spec  # a Deployment's field
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    headless = objects(profile, "Service")[spec["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"  # headless: one DNS record per pod
    assert headless["spec"]["publishNotReadyAddresses"] is True  # names resolve while the models load
    assert headless["spec"]["selector"].items() <= labels.items()
    grpc = next(p for p in headless["spec"]["ports"] if p["name"] == "grpc")
    assert {p["name"]: p["containerPort"] for p in container(profile, TRITON)["ports"]}[grpc["targetPort"]] == 8001


def _triton_addresses(profile: str, release: str = RELEASE) -> list[str]:
    (orchestrator,) = objects(profile, "Deployment", release).values()
    (c,) = orchestrator["spec"]["template"]["spec"]["containers"]
    addresses: list[str] = env_of(c)["DUET_TRITON__URL"]["value"].split(",")
    return addresses


@pytest.mark.parametrize(("profile", "pods"), sorted(TRITON_PODS.items()))
def test_orchestrator_dials_every_triton_pod_on_its_own(profile: str, pods: int) -> None:
    domain = PROFILES[profile].get("clusterDomain", "cluster.local")
    expected = [f"{TRITON}-{i}.{TRITON}-pods.{NAMESPACE}.svc.{domain}:8001" for i in range(pods)]
    assert _triton_addresses(profile) == expected
    # `duet serve` reads them as that many servers
    settings = load_settings(env={"DUET_TRITON__URL": ",".join(expected)})
    assert settings.triton.endpoints() == tuple(expected)


@pytest.mark.parametrize("profile", DNS_PROFILES)
def test_orchestrator_finds_the_triton_pods_by_the_headless_service_name(profile: str) -> None:
    """`endpoints: dns`: one `dns:///NAME:PORT` entry, NAME the StatefulSet's governing (headless) Service and PORT
    its grpc port; `duet serve` reads it as a name to resolve again every `discoveryIntervalSeconds`."""
    env = env_of(container(profile, ORCH))
    (url,) = _triton_addresses(profile)
    sts = objects(profile, "StatefulSet")[TRITON]
    headless = objects(profile, "Service")[sts["spec"]["serviceName"]]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    grpc = next(p for p in headless["ports"] if p["name"] == "grpc")
    assert url == f"dns:///{sts['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local:{grpc['port']}"
    settings = load_settings(
        env={
            "DUET_TRITON__URL": url,
            "DUET_TRITON__DISCOVERY_INTERVAL_S": env["DUET_TRITON__DISCOVERY_INTERVAL_S"]["value"],
        }
    )
    from orchestrator.models.discovery import Membership

    membership = Membership(settings.triton.endpoints())
    assert membership.dynamic and not membership.fixed and settings.triton.discovery_interval_s == 5.0


def test_an_unknown_endpoints_mode_fails_the_render() -> None:
    h = helm()
    with h.Chart.load(CHART) as chart, pytest.raises(h.HelmError, match="not one of dns, perPod, service"):
        chart.render({"triton": {"endpoints": "roundrobin"}}, name=RELEASE, namespace=NAMESPACE, is_install=True)


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _assert_addresses_name_statefulset_pods(profile: str, release: str) -> None:
    """Each address is `<pod>.<headless service>.<namespace>.svc.<domain>:<grpc>` of a pod the StatefulSet makes:
    the ordinals 0..N-1, N the most pods it can have (its replicas, or its HPA's maxReplicas)."""
    domain = PROFILES[profile].get("clusterDomain", "cluster.local")
    services = objects(profile, "Service", release)
    (sts,) = objects(profile, "StatefulSet", release).values()
    name, spec = sts["metadata"]["name"], sts["spec"]
    labels = spec["template"]["metadata"]["labels"]
    hpas = [
        h
        for h in objects(profile, "HorizontalPodAutoscaler", release).values()
        if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name}
    ]
    most = hpas[0]["spec"]["maxReplicas"] if hpas else spec["replicas"]
    # the controller labels each pod `controller-revision-hash: <name>-<hash of up to 10>`: a label value (63)
    assert len(name) + 11 <= 63, name
    ordinals = []
    for address in _triton_addresses(profile, release):
        host, _, port = address.rpartition(":")
        pod, service, namespace, svc, *rest = host.split(".")
        assert (namespace, svc, ".".join(rest)) == (NAMESPACE, "svc", domain), address
        assert all(_DNS_LABEL.fullmatch(label) for label in host.split(".")), address  # 63 at most each
        assert service == spec["serviceName"], address
        headless = services[service]["spec"]
        assert headless["clusterIP"] == "None" and headless["selector"].items() <= labels.items()
        ports = {p["port"]: p["targetPort"] for p in headless["ports"]}
        assert ports.get(int(port)) == "grpc", address
        match = re.fullmatch(rf"{re.escape(name)}-(0|[1-9][0-9]*)", pod)
        assert match, f"{pod} is not a pod of StatefulSet {name}"
        ordinals.append(int(match[1]))
    assert ordinals == list(range(most)), (ordinals, most)


@pytest.mark.parametrize("profile", sorted(TRITON_PODS))
def test_every_triton_address_names_a_pod_of_the_statefulset(profile: str) -> None:
    _assert_addresses_name_statefulset_pods(profile, RELEASE)


def test_a_long_release_name_keeps_the_pod_names_valid() -> None:
    """Pod names are DNS labels: the StatefulSet's name is shortened (52 at most) for a long release name."""
    docs = render("scale-triton", LONG_RELEASE)
    assert not _invalid(docs)
    (sts,) = objects("scale-triton", "StatefulSet", LONG_RELEASE)
    assert sts.endswith("-triton") and len(sts) <= 52, sts
    _assert_addresses_name_statefulset_pods("scale-triton", LONG_RELEASE)


def _settings_fields(cls: Any = Settings, prefix: str = "DUET_") -> set[str]:
    hints = typing.get_type_hints(cls)
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}".upper()
        names |= _settings_fields(hints[f.name], f"{key}__") if dataclasses.is_dataclass(hints[f.name]) else {key}
    return names


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_orchestrator_env_is_real_settings_that_listen_beyond_loopback(profile: str) -> None:
    env = env_of(container(profile, ORCH))
    duet_env = {name for name in env if name.startswith("DUET_")}
    assert duet_env <= _settings_fields(), duet_env - _settings_fields()
    plain = {name: e["value"] for name, e in env.items() if "value" in e}
    settings = load_settings(env={**plain, "DUET_STORE__URL": "postgresql://u@db/duet"})  # validates like `serve`
    assert settings.server.host == "0.0.0.0" and settings.api.enabled  # protected mode needs the control plane
    assert settings.metrics.host == "0.0.0.0" and settings.metrics.port == 9090
    ports = {p["name"]: p["containerPort"] for p in container(profile, ORCH)["ports"]}
    assert ports == {"grpc": settings.server.port, "http": settings.api.http_port, "metrics": settings.metrics.port}


def _secretish(name: str) -> bool:
    return name.endswith(("PASSWORD", "SECRET", "TOKEN", "API_KEY", "STORE__URL"))


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_secrets_only_by_reference(profile: str) -> None:
    docs = render(profile)
    assert not [d for _, d in docs if d["kind"] == "Secret"]  # the chart never holds a secret itself
    for _, doc in docs:
        if doc["kind"] == "ConfigMap":
            assert "postgres" not in str(doc["data"]).lower() and "password" not in str(doc["data"]).lower()
    for name in (ORCH, TRITON):
        spec = pod_spec(profile, name)
        for c in spec["containers"] + spec.get("initContainers", []):
            for var, e in env_of(c).items():
                if _secretish(var):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (name, var)
    store = env_of(container(profile, ORCH))["DUET_STORE__URL"]["valueFrom"]["secretKeyRef"]
    assert store == {"name": "duet-store", "key": "url"}


def test_a_secret_in_plain_env_is_refused() -> None:
    h = helm()
    values = {"orchestrator": {"extraEnv": [{"name": "OPENAI_API_KEY", "value": "sk-do-not-render"}]}}
    with h.Chart.load(CHART) as chart, pytest.raises(h.HelmError, match="looks like a secret"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def _exported_metrics() -> set[str]:
    from orchestrator.telemetry import Telemetry

    return {family.name for family in Telemetry().registry.collect()}


def test_hpa_scales_on_a_metric_the_orchestrator_exports() -> None:
    exported = _exported_metrics()
    (hpa,) = objects("default", "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": ORCH}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name in exported, f"{name} is not exported by orchestrator/telemetry.py ({sorted(exported)})"
    assert 0 < int(metric["pods"]["target"]["averageValue"]) < 64  # below DUET_SERVER__MAX_SESSIONS
    assert "replicas" not in objects("default", "Deployment")[ORCH]["spec"]  # the HPA owns the count
    # the adapter rule that serves it, from the series of that name
    config = yaml.safe_load(objects("default", "ConfigMap")[f"{RELEASE}-prometheus-adapter"]["data"]["config.yaml"])
    (rule,) = [r for r in config["rules"] if r["name"]["as"] == name]
    assert rule["seriesQuery"].startswith(f"{name}{{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    pod = objects("default", "Deployment")[ORCH]["spec"]["template"]["metadata"]["annotations"]
    assert pod["prometheus.io/scrape"] == "true" and pod["prometheus.io/port"] == "9090"


def test_triton_queue_time_scales_triton_when_asked() -> None:
    assert ORCH in objects("scale-triton", "HorizontalPodAutoscaler")
    hpa = objects("scale-triton", "HorizontalPodAutoscaler")[TRITON]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["selector"] == {"matchLabels": {"model": "llm"}}
    config = yaml.safe_load(
        objects("scale-triton", "ConfigMap")[f"{RELEASE}-prometheus-adapter"]["data"]["config.yaml"]
    )
    (rule,) = config["externalRules"]
    assert rule["name"]["as"] == metric["external"]["metric"]["name"]
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": TRITON}
    assert "replicas" not in objects("scale-triton", "StatefulSet")[TRITON]["spec"]


def test_autoscaling_off_renders_fixed_replicas_and_no_adapter_rules() -> None:
    profile = "cpu-noautoscale-ingress"
    assert not objects(profile, "HorizontalPodAutoscaler") and not objects(profile, "ConfigMap")
    assert objects(profile, "Deployment")[ORCH]["spec"]["replicas"] == 2


def test_disruption_budgets() -> None:
    pdbs = objects("default", "PodDisruptionBudget")
    assert pdbs[ORCH]["spec"]["maxUnavailable"] == 1
    assert TRITON not in pdbs  # one Triton replica: minAvailable 1 would block every node drain
    pdbs = objects("scale-triton", "PodDisruptionBudget")
    assert pdbs[TRITON]["spec"]["minAvailable"] == 1
    for name, pdb in pdbs.items():
        labels = workloads("scale-triton")[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_container_requests_resources_and_runs_unprivileged(profile: str) -> None:
    for name in (ORCH, TRITON):
        spec = pod_spec(profile, name)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"] + spec.get("initContainers", []):
            requests = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), (name, c["name"])
            assert c["securityContext"]["privileged"] is False
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_orchestrator_drains_gracefully() -> None:
    spec = pod_spec("default", ORCH)
    (c,) = spec["containers"]
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) > 0  # waits only: endpoints go before SIGTERM
    assert spec["terminationGracePeriodSeconds"] == 330
    # the application drains for DUET_SERVER__DRAIN_TIMEOUT_S after SIGTERM: the grace covers the sleep, the
    # drain and the stop after it, or Kubernetes kills the pod mid-drain
    drain_s = load_settings(env={"DUET_SERVER__DRAIN_TIMEOUT_S": env_of(c)["DUET_SERVER__DRAIN_TIMEOUT_S"]["value"]})
    assert drain_s.server.drain_timeout_s == 285
    assert spec["terminationGracePeriodSeconds"] >= int(command[1]) + drain_s.server.drain_timeout_s + 30
    assert objects("default", "Deployment")[ORCH]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_a_grace_period_shorter_than_the_drain_is_refused() -> None:
    h = helm()
    values = {"orchestrator": {"drain": {"drainTimeoutSeconds": 600}}}  # the default grace (330) is too short
    with h.Chart.load(CHART) as chart, pytest.raises(h.HelmError, match="terminationGracePeriodSeconds"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_orchestrator_probes_hit_a_route_that_exists_without_a_key() -> None:
    c = container("default", ORCH)
    document = yaml.safe_load((REPO / "orchestrator" / "api" / "http" / "openapi.yaml").read_text())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["port"] == "http"
        operation = document["paths"][get["path"]]["get"]
        assert operation["security"] == [], f"{get['path']} needs a key: a probe would get 401"
    # readiness follows Triton, the store and the drain; liveness only the event loop (a drain is not a crash)
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/v1/health/live"


def test_ingress_is_optional_with_session_affinity() -> None:
    assert not objects("default", "Ingress")
    (ingress,) = objects("cpu-noautoscale-ingress", "Ingress").values()
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": ORCH, "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"secretName": "duet-tls", "hosts": ["duet.example.internal"]}]


def test_no_registry_host_in_the_chart() -> None:
    """Images are `repository:tag` values with a pinned tag; the chart names no registry (users set it)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["orchestrator"]["image"]["repository"] == "duet-orchestrator"
    assert values["triton"]["image"]["repository"] == "duet-triton"
    for profile in PROFILES:
        for name in (ORCH, TRITON):
            spec = pod_spec(profile, name)
            for c in spec["containers"] + spec.get("initContainers", []):
                repository, _, tag = c["image"].rpartition(":")
                first = repository.split("/")[0]
                assert "." not in first and ":" not in first and first != "localhost", c["image"]
                assert tag and tag != "latest", c["image"]
