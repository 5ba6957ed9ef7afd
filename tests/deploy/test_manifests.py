"""deploy/: every YAML file parses, and what the manifests assume is what the code does.

Nothing here needs Docker, kubectl or a cluster: the Kubernetes manifests (deploy/k8s/), the GPU compose file and
deploy/prometheus.yml are read as YAML and checked against the gateway's own settings loader, REST routes, access
table and metrics registry, and the gateway container's command is run on this machine. Nothing is applied to a
cluster and no image is built.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import httpx
import pytest
import yaml

from blat_gateway.api import PUBLIC, by_route
from blat_gateway.metrics import Metrics
from blat_gateway.settings import CONFIG_ENV, ENV_PREFIX, Settings, load_settings
from tests.server.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.gpu.yml"
DOCKERFILE = DEPLOY / "Dockerfile.gateway"
PROMETHEUS = DEPLOY / "prometheus.yml"
# tritonserver's own defaults for --http-port, --grpc-port and --metrics-port (the command sets none of them).
TRITON_DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


# ------------------------------------------------------------------------------------------------------ reading


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def documents(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[tuple[Path, dict]]:
    """Every Kubernetes object under deploy/k8s/ (documents with a kind; not the kustomization itself)."""
    return [
        (p, d)
        for p in yaml_files()
        if K8S in p.parents
        for d in documents(p)
        if isinstance(d, dict) and "kind" in d and d["kind"] != "Kustomization"
    ]


def objects(kind: str) -> list[dict]:
    return [d for _, d in k8s_objects() if d["kind"] == kind]


def obj(kind: str, name: str) -> dict:
    found = [d for d in objects(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name!r} under deploy/k8s/, found {len(found)}"
    return found[0]


def container_of(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one container expected"
    return containers[0]


def gateway_deployment() -> dict:
    """The Deployment whose container is configured by BLAT_SERVER_CONFIG."""
    found = [d for d in objects("Deployment") if any(e["name"] == CONFIG_ENV for e in container_of(d).get("env", []))]
    assert len(found) == 1, f"expected one Deployment setting {CONFIG_ENV}, found {len(found)}"
    return found[0]


def triton_deployment() -> dict:
    found = [d for d in objects("Deployment") if (container_of(d).get("command") or [""])[0] == "tritonserver"]
    assert len(found) == 1, f"expected one Deployment running tritonserver, found {len(found)}"
    return found[0]


def service_for(deployment: dict) -> dict:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    found = [s for s in objects("Service") if s["spec"]["selector"].items() <= labels.items()]
    assert len(found) == 1, f"expected one Service selecting {deployment['metadata']['name']}'s pods"
    return found[0]


def container_port(container: dict, port: int | str) -> int:
    """A probe's or Service's port (a number or a port name) as the container's port number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} is not a named port of container {container['name']}: {named}"
    return named[port]


def service_target_ports(service: dict, container: dict) -> dict[int, int]:
    """Service port -> container port number."""
    return {p["port"]: container_port(container, p.get("targetPort", p["port"])) for p in service["spec"]["ports"]}


def secret_value(name: str, key: str) -> str:
    secret = obj("Secret", name)
    values = dict(secret.get("stringData") or {})
    if key not in values and key in (secret.get("data") or {}):
        import base64

        values[key] = base64.b64decode(secret["data"][key]).decode()
    assert key in values, f"Secret {name} has no key {key!r} (has {sorted(values)})"
    return values[key]


def mount_for(pod_spec: dict, container: dict, path: str) -> tuple[dict, dict]:
    """(volumeMount, volume) of the deepest mount holding `path`."""
    p = PurePosixPath(path)
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if p == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in p.parents
    ]
    assert mounts, f"{path} is on no volume of container {container['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = {v["name"]: v for v in pod_spec.get("volumes", [])}[mount["name"]]
    return mount, volume


def gateway_env(deployment: dict, config_file: Path) -> dict[str, str]:
    """The gateway container's environment: values as written, Secret references resolved from the Secret
    manifest, and BLAT_SERVER_CONFIG pointed at `config_file`, where the ConfigMap's file it names is written."""
    pod_spec = deployment["spec"]["template"]["spec"]
    container = container_of(deployment)
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secret_value(ref["name"], ref["key"])
    mount, volume = mount_for(pod_spec, container, env[CONFIG_ENV])
    assert "configMap" in volume, f"{env[CONFIG_ENV]} should come from a ConfigMap volume, not {volume}"
    rel = str(PurePosixPath(env[CONFIG_ENV]).relative_to(mount["mountPath"]))
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])} or None
    key = items[rel] if items else rel
    data = obj("ConfigMap", volume["configMap"]["name"])["data"]
    assert key in data, f"ConfigMap {volume['configMap']['name']} has no key {key!r}"
    config_file.write_text(data[key])
    env[CONFIG_ENV] = str(config_file)
    return env


def k8s_settings(tmp_path: Path) -> tuple[Settings, dict[str, str]]:
    env = gateway_env(gateway_deployment(), tmp_path / "gateway.json")
    assert all(k.startswith(ENV_PREFIX) for k in env), f"unexpected variables: {sorted(env)}"
    return load_settings(environ=env), env


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def compose_container_ports(service: dict) -> set[int]:
    """Container ports a compose service publishes or exposes ("8080:8080", "127.0.0.1:8080:8080/tcp", 8080)."""
    ports = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}
    return ports | {int(str(p).split("/")[0]) for p in service.get("expose", [])}


def compose_volumes(service: dict) -> list[tuple[Path, str, bool]]:
    """(host path, container path, read-only) of a service's bind mounts (short syntax)."""
    out = []
    for v in service.get("volumes", []):
        host, target, *mode = v.split(":")
        out.append(((COMPOSE.parent / host).resolve(), target, "ro" in mode))
    return out


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; comments dropped."""
    lines, out = [], []
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        lines.append(raw.rstrip())
        if raw.rstrip().endswith("\\"):
            lines[-1] = lines[-1][:-1]
            continue
        text = " ".join(s.strip() for s in lines)
        lines = []
        instruction, _, args = text.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_exec_form(instruction: str) -> list[str] | None:
    """CMD / ENTRYPOINT as a JSON list (the exec form; a shell form or a trailing comment would not be JSON)."""
    found = [args for ins, args in dockerfile() if ins == instruction]
    if not found:
        return None
    value = json.loads(found[-1])
    assert isinstance(value, list) and all(isinstance(s, str) for s in value), f"{instruction} is not exec form"
    return value


def workdir() -> PurePosixPath:
    return PurePosixPath([args for ins, args in dockerfile() if ins == "WORKDIR"][-1])


def image_file(container_path: str) -> Path | None:
    """The repository file the gateway image holds at `container_path` (through its COPY instructions)."""
    p = PurePosixPath(posixpath.join(str(workdir()), container_path))
    for ins, args in dockerfile():
        if ins != "COPY":
            continue
        *sources, dest = shlex.split(args)
        dest_path = PurePosixPath(posixpath.join(str(workdir()), dest))
        for src in sources:
            target = dest_path / Path(src).name if len(sources) > 1 or dest.endswith("/") else dest_path
            if p == target or target in p.parents:
                return ROOT / src / p.relative_to(target)
    return None


def triton_ports(command: list[str]) -> dict[str, int]:
    ports = dict(TRITON_DEFAULT_PORTS)
    for arg in command:
        m = re.fullmatch(r"--(http|grpc|metrics)-port=(\d+)", arg)
        if m:
            ports[m.group(1)] = int(m.group(2))
    return ports


def public_get(path: str) -> bool:
    return by_route("GET", path).scope == PUBLIC


def contains(directory: str, path: str) -> bool:
    d, p = PurePosixPath(directory), PurePosixPath(path)
    return p == d or d in p.parents


# -------------------------------------------------------------------------------------------------------- tests


def test_every_yaml_file_parses_and_every_object_is_named():
    files = yaml_files()
    assert COMPOSE in files and PROMETHEUS in files and (K8S / "kustomization.yaml") in files
    seen = set()
    for path, doc in k8s_objects():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: not a Kubernetes object"
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{path}: {key} is defined twice"
        seen.add(key)
    for path in files:  # every document is a mapping (compose, Prometheus, Kubernetes, Helm values)
        assert all(isinstance(d, dict) for d in documents(path)), path

    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert all((K8S / r).is_file() for r in listed), listed
    text = (K8S / "kustomization.yaml").read_text()
    for path in sorted(K8S.glob("*.y*ml")):  # what `kubectl apply -k` leaves out is said in the file
        if path.name != "kustomization.yaml" and path.name not in listed:
            assert re.search(rf"^#\s+{re.escape(path.name)}\s", text, re.M), f"{path.name}: not listed, not explained"
    secrets = {p.name for p, d in k8s_objects() if d["kind"] == "Secret"}
    assert secrets and not secrets & set(listed), "the example Secret (placeholder keys) must not be applied by -k"


def test_gateway_settings_from_the_configmap_and_env_match_the_manifests(tmp_path):
    settings, env = k8s_settings(tmp_path)
    deployment = gateway_deployment()
    pod_spec, container = deployment["spec"]["template"]["spec"], container_of(deployment)

    assert settings.host == "0.0.0.0", "in a container the gateway must listen on all interfaces"
    assert settings.backend == "triton"
    assert settings.auth.keys, "the Secret's API keys reach the settings"

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}, ports
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container_port(container, container[probe]["httpGet"]["port"]) == settings.http_port, probe
    targets = service_target_ports(service_for(deployment), container)
    assert set(targets.values()) == {settings.http_port, settings.grpc_port}, targets

    # Triton: the URL names the Triton Service and the Service port that reaches tritonserver's gRPC port.
    host, port = settings.triton.url.rsplit(":", 1)
    triton = triton_deployment()
    triton_service = service_for(triton)
    assert host == triton_service["metadata"]["name"]
    grpc = triton_ports(container_of(triton)["command"])["grpc"]
    assert service_target_ports(triton_service, container_of(triton)).get(int(port)) == grpc, (
        f"{settings.triton.url} does not reach Triton's gRPC port {grpc}"
    )

    # The index directory: on the gateway's writable ReadWriteOnce PVC (its parent is the mount: a fresh volume's
    # lost+found stays out of the index). The bundle: on a volume.
    mount, volume = mount_for(pod_spec, container, settings.index_dir)
    assert str(PurePosixPath(settings.index_dir).parent) == mount["mountPath"], (settings.index_dir, mount)
    assert not mount.get("readOnly") and "persistentVolumeClaim" in volume
    pvc = obj("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    _, bundle_volume = mount_for(pod_spec, container, settings.bundle)
    claim = bundle_volume["persistentVolumeClaim"]["claimName"]
    obj("PersistentVolumeClaim", claim)
    assert PurePosixPath(settings.bundle).is_absolute()

    # Scraping annotations point at /metrics on the HTTP port.
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert int(annotations["prometheus.io/port"]) == settings.http_port
    assert public_get(annotations["prometheus.io/path"])

    # Every Secret reference names a key of a Secret manifest.
    for e in container["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            secret_value(ref["name"], ref["key"])


def test_probe_paths_are_public_routes_of_the_app(tiny_bundle, tmp_path):
    from blat_gateway.rest import create_app
    from blat_gateway.service import Gateway

    gw = Gateway(load_settings(environ={}, bundle=str(tiny_bundle), index_dir=str(tmp_path / "index")))
    try:
        app = create_app(gw)
    finally:
        gw.close()
    routes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ())}
    container = container_of(gateway_deployment())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert ("GET", path) in routes, f"{probe}: GET {path} is not a route of the gateway"
        assert public_get(path), (
            f"{probe}: GET {path} is not declared PUBLIC in server/blat_gateway/api/ (probes send no key)"
        )
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_triton_deployment_matches_compose():
    services = compose()["services"]
    triton = triton_deployment()
    container = container_of(triton)
    assert container["image"] == services["triton"]["image"], "the Triton image tag differs from compose"
    assert container["command"] == services["triton"]["command"], "tritonserver flags differ from compose"
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    ports = triton_ports(container["command"])
    assert {p["containerPort"] for p in container["ports"]} == set(ports.values())
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"]["path"] == path
        assert container_port(container, container[probe]["httpGet"]["port"]) == ports["http"]
    # compose's health check asks the same endpoint of the same port
    url = next(a for a in services["triton"]["healthcheck"]["test"] if "/v2/" in a)
    assert url.endswith(f":{ports['http']}{container['readinessProbe']['httpGet']['path']}"), url
    assert set(service_target_ports(service_for(triton), container).values()) == set(ports.values())
    # the model repository: the path tritonserver reads is a read-only volume
    repo = next(a.split("=", 1)[1] for a in container["command"] if a.startswith("--model-repository="))
    mount, volume = mount_for(triton["spec"]["template"]["spec"], container, repo)
    assert mount["mountPath"] == repo and mount.get("readOnly")
    obj("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


def test_images_secret_and_command_agree_between_k8s_compose_and_dockerfile():
    gateway = compose()["services"]["gateway"]
    container = container_of(gateway_deployment())
    assert container["image"] == gateway["image"], "the gateway image name differs between k8s and compose"
    build = gateway["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    # compose runs the image's CMD; Kubernetes runs command (+ args): the same argv
    assert "command" not in gateway and "entrypoint" not in gateway
    image_argv = [*(dockerfile_exec_form("ENTRYPOINT") or []), *dockerfile_exec_form("CMD")]
    assert kubernetes_argv(container) == image_argv == ["python", "-m", "blat_gateway"]
    # the client is its own distribution: not copied into the server image
    copies = [shlex.split(args)[:-1] for ins, args in dockerfile() if ins == "COPY"]
    assert not any(src.rstrip("/") == "clients" for srcs in copies for src in srcs)
    install = 'pip install --no-cache-dir ".[server,gpu,milvus]"'
    assert any(ins == "RUN" and install in args for ins, args in dockerfile())
    exposed = {int(p) for ins, args in dockerfile() if ins == "EXPOSE" for p in args.split()}
    assert {p["containerPort"] for p in container["ports"]} <= exposed
    # the example Secret: API keys that say they must be replaced, with scopes the settings accept
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == f"{ENV_PREFIX}AUTH__KEYS"]
    assert len(refs) == 1, "BLAT_SERVER_AUTH__KEYS should come from a Secret"
    for ref in refs:
        value = secret_value(ref["name"], ref["key"])
        keys = load_settings(environ={f"{ENV_PREFIX}AUTH__KEYS": value}).auth.keys
        assert keys and all("REPLACE" in k for k in keys), f"Secret {ref['name']}: placeholder keys only"


def test_compose_gateway_settings_match_its_ports_and_volumes():
    services = compose()["services"]
    gateway = services["gateway"]
    env = compose_env(gateway)
    config = image_file(env[CONFIG_ENV])
    assert config is not None and config.is_file(), f"{env[CONFIG_ENV]} is not in the image"
    assert not any(contains(target, env[CONFIG_ENV]) for _, target, _ in compose_volumes(gateway)), (
        "a volume hides the settings file"
    )
    settings = load_settings(environ={**env, CONFIG_ENV: str(config)})
    assert settings.host == "0.0.0.0" and settings.backend == "triton"
    assert compose_container_ports(gateway) == {settings.http_port, settings.grpc_port}

    host, port = settings.triton.url.rsplit(":", 1)
    assert host in services and int(port) == triton_ports(services["triton"]["command"])["grpc"]
    assert host in gateway["depends_on"]
    check = next(a for a in gateway["healthcheck"]["test"] if a.startswith("localhost:"))  # the same as readiness
    readiness = container_of(gateway_deployment())["readinessProbe"]["httpGet"]["path"]
    assert check == f"localhost:{settings.http_port}{readiness}"

    def volume_for(path: str, writable: bool) -> None:
        absolute = posixpath.join(str(workdir()), path)
        holding = [(h, t, ro) for h, t, ro in compose_volumes(gateway) if contains(t, absolute)]
        assert holding, f"{absolute} is on no volume of the gateway service"
        assert not (writable and holding[0][2]), f"{absolute} is on a read-only volume"

    volume_for(settings.index_dir, writable=True)
    volume_for(settings.bundle, writable=False)
    repo = next(a.split("=", 1)[1] for a in services["triton"]["command"] if a.startswith("--model-repository="))
    assert any(t == repo for _, t, _ in compose_volumes(services["triton"]))


def test_prometheus_scrapes_the_compose_services_on_their_ports():
    services = compose()["services"]
    prometheus = services["prometheus"]
    image, _, tag = prometheus["image"].rpartition(":")
    assert image and tag and tag != "latest", "pin the Prometheus image"
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert (PROMETHEUS.resolve(), config_path, True) in compose_volumes(prometheus), "prometheus.yml not mounted"

    env = compose_env(services["gateway"])
    gateway_settings = load_settings(environ={**env, CONFIG_ENV: str(image_file(env[CONFIG_ENV]))})
    expected = {
        "gateway": (gateway_settings.http_port, "/metrics"),
        "triton": (triton_ports(services["triton"]["command"])["metrics"], "/metrics"),
    }
    scraped = set()
    for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in services, f"{job['job_name']}: {host} is not a compose service"
                assert int(port) in compose_container_ports(services[host]), f"{target}: not a port {host} serves"
                assert (int(port), job.get("metrics_path", "/metrics")) == expected[host], target
                scraped.add(host)
    assert scraped == set(expected)
    assert public_get("/metrics"), "the gateway's /metrics must need no key to be scraped"


def test_hpa_scales_on_a_metric_the_gateway_exports_and_respects_the_index():
    deployment = gateway_deployment()
    [hpa] = objects("HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])

    families = {m.name: m.type for m in Metrics().registry.collect()}
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert names
    for name in names:
        assert families.get(name) == "gauge", f"{name} is not a gauge the gateway exports: {sorted(families)}"

    # prometheus-adapter serves exactly that name
    adapter = [d for p in yaml_files() if K8S in p.parents for d in documents(p) if "rules" in d]
    assert len(adapter) == 1
    served = {r["name"]["as"] for r in adapter[0]["rules"]["custom"]}
    assert set(names) <= served
    for rule in adapter[0]["rules"]["custom"]:
        assert rule["seriesQuery"].startswith(rule["name"]["as"] + "{")

    # One pod owns the index (a ReadWriteOnce PVC): until the index is shared, at most one replica.
    index_claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v and not v["persistentVolumeClaim"].get("readOnly")
    ]
    if any(obj("PersistentVolumeClaim", c)["spec"]["accessModes"] == ["ReadWriteOnce"] for c in index_claims):
        assert hpa["spec"].get("minReplicas", 1) == hpa["spec"]["maxReplicas"] == deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_every_container_has_resources():
    for path, doc in k8s_objects():
        spec = (
            doc["spec"]["template"]["spec"]
            if doc["kind"] == "Deployment"
            else doc["spec"]
            if doc["kind"] == "Pod"
            else None
        )
        for c in (spec or {}).get("containers", []):
            assert {"requests", "limits"} <= c.get("resources", {}).keys(), f"{path}: {c['name']} has no resources"


# --------------------------------------------------------------------------------------------- the real command


def kubernetes_argv(container: dict) -> list[str]:
    """What the container runs: `command` replaces the image's ENTRYPOINT and CMD, `args` alone replaces CMD."""
    entrypoint = dockerfile_exec_form("ENTRYPOINT") or []
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    if "args" in container:
        return [*entrypoint, *container["args"]]
    return [*entrypoint, *dockerfile_exec_form("CMD")]


def test_gateway_container_command_starts_the_server_here(tiny_bundle, tmp_path):
    """Run the gateway Deployment's exact command (command + args, else the Dockerfile's ENTRYPOINT/CMD) from the
    repository root, with the manifest's environment: the ConfigMap's JSON written to a temp file that
    BLAT_SERVER_CONFIG names, the Secret's keys in BLAT_SERVER_AUTH__KEYS, BLAT_SERVER_TRITON__URL as written.
    `python` on PATH is this test's interpreter (the venv's), as the image's python.

    Overridden for this machine, and why:
      BLAT_SERVER_BUNDLE=<tiny_bundle fixture>   the image's /app/bundles volume does not exist here
      BLAT_SERVER_INDEX_DIR=<tmp dir>            nor does the /var/lib/blat PVC
      BLAT_SERVER_HOST=127.0.0.1                 no need to listen on all interfaces of a shared machine
      BLAT_SERVER_BACKEND=onnxruntime            there is no Triton (GPU) here
      BLAT_SERVER_HTTP_PORT / _GRPC_PORT=<free>  8080 / 50051 may be taken here

    Then: the readiness probe's path answers 200 on the HTTP port (90 s at most), the liveness and startup probes'
    paths answer 200, the gRPC port answers a health check, a data route refuses a call without a key (401) and
    accepts one with the Secret's key, and SIGTERM ends the process with exit 0 within the pod's grace period.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deployment = gateway_deployment()
    container = container_of(deployment)
    argv = kubernetes_argv(container)
    manifest_env = gateway_env(deployment, tmp_path / "gateway.json")
    keys = json.loads(manifest_env[f"{ENV_PREFIX}AUTH__KEYS"])
    grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    probes = {name: container[name]["httpGet"]["path"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}

    base = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    base["PYTHONUNBUFFERED"] = "1"
    for attempt in range(3):  # a free port can be taken by someone else before the gateway binds it
        http_port, grpc_port = free_port(), free_port()
        overrides = {
            f"{ENV_PREFIX}BUNDLE": str(tiny_bundle),
            f"{ENV_PREFIX}INDEX_DIR": str(tmp_path / "index"),
            f"{ENV_PREFIX}HOST": "127.0.0.1",
            f"{ENV_PREFIX}BACKEND": "onnxruntime",
            f"{ENV_PREFIX}HTTP_PORT": str(http_port),
            f"{ENV_PREFIX}GRPC_PORT": str(grpc_port),
        }
        print(f"running {argv} with the manifest's env, overridden for this machine: {overrides}")
        log_path = tmp_path / f"gateway-{attempt}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**base, **manifest_env, **overrides},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        tail = lambda: log_path.read_text(errors="replace")[-4000:]  # noqa: E731
        url = f"http://127.0.0.1:{http_port}"
        try:
            deadline = time.monotonic() + 90
            ready = False
            with httpx.Client(timeout=2.0) as http:
                while proc.poll() is None and time.monotonic() < deadline:
                    try:
                        if http.get(url + probes["readinessProbe"]).status_code == 200:
                            ready = True
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
                if not ready:
                    if proc.poll() is not None and attempt < 2 and "address already in use" in tail().lower():
                        continue
                    pytest.fail(
                        f"{argv}: {probes['readinessProbe']} never answered 200 (exit code {proc.poll()}):\n{tail()}",
                        pytrace=False,
                    )
                for name in ("livenessProbe", "startupProbe"):
                    assert http.get(url + probes[name]).status_code == 200, name
                assert http.get(url + "/v1/info").status_code == 401, "the Secret's keys were not applied"
                key = next(k for k, scopes in keys.items() if "read" in scopes)
                assert http.get(url + "/v1/info", headers={"x-api-key": key}).status_code == 200
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(grace)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {grace} s after SIGTERM (terminationGracePeriodSeconds):\n{tail()}")
            assert code == 0, f"exit code {code} after SIGTERM:\n{tail()}"
            return
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    pytest.fail("no free ports after 3 attempts")
