"""The Milvus deployment examples (deploy/milvus/): the Kubernetes overlay and the compose file give gateways whose
settings load, name Milvus and Triton where those run, and split a writer from read-only, stateless replicas.
Parsed and checked here; not applied to a cluster (no Docker or kubectl in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from blat_gateway.settings import CONFIG_ENV, load_settings

ROOT = Path(__file__).resolve().parents[2]
MILVUS = ROOT / "deploy" / "milvus"
OVERLAY = MILVUS / "k8s"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_objects() -> dict[tuple[str, str], dict]:
    return {
        (d["kind"], d["metadata"]["name"]): d
        for p in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
        for d in docs(p)
        if "kind" in d and "metadata" in d
    }


def overlay() -> tuple[dict, dict[tuple[str, str], dict], dict[tuple[str, str], dict]]:
    """(kustomization, patches by (kind, name), added objects by (kind, name))."""
    k = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    patches = {(d["kind"], d["metadata"]["name"]): d for p in k["patches"] for d in docs(OVERLAY / p["path"])}
    added = {
        (d["kind"], d["metadata"]["name"]): d for r in k["resources"] if r.endswith(".yaml") for d in docs(OVERLAY / r)
    }
    return k, patches, added


def env_of(deployment: dict) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", []) if "value" in e}


def test_overlay_files_exist_and_patch_objects_of_the_base():
    k, patches, added = overlay()
    assert "../../k8s" in k["resources"]
    for ref in [*k["resources"], *(p["path"] for p in k["patches"])]:
        assert ref == "../../k8s" or (OVERLAY / ref).is_file(), ref
    base = base_objects()
    assert set(patches) <= set(base), f"patches for objects the base lacks: {set(patches) - set(base)}"
    listed = {*(r for r in k["resources"]), *(p["path"] for p in k["patches"])}
    assert {p.name for p in OVERLAY.glob("*.yaml")} - {"kustomization.yaml"} == listed - {"../../k8s"}
    assert not set(added) & set(base), "an added object would clash with one of the base"


@pytest.mark.parametrize("role", ["writer", "reader"])
def test_k8s_gateways_load_their_settings(tmp_path, role):
    _, patches, added = overlay()
    config = tmp_path / "gateway.json"
    config.write_text(patches[("ConfigMap", "blat-gateway-config")]["data"]["gateway.json"])
    deployment = (
        added[("Deployment", "blat-gateway-writer")] if role == "writer" else patches[("Deployment", "blat-gateway")]
    )
    env = {**env_of(deployment), CONFIG_ENV: str(config)}
    s = load_settings(environ=env)
    assert s.index_engine == "milvus" and s.milvus.uri.startswith("http://") and s.read_only == (role == "reader")
    assert s.triton.url.startswith("dns:///blat-triton-headless") and s.triton.load_balancing == "round_robin"
    if role == "reader":  # stateless: the index volume is gone, so any number of replicas
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["index"].get("persistentVolumeClaim", None) is None and "emptyDir" in volumes["index"]
        assert deployment["spec"]["replicas"] >= 2
    else:
        assert deployment["spec"]["replicas"] == 1  # one writer: duplicate checks read, then write
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in deployment["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert "blat-index" in claims  # uploaded audio lives on the writer's volume


def test_triton_replicas_are_reached_through_a_headless_service():
    _, patches, added = overlay()
    headless = added[("Service", "blat-triton-headless")]
    triton = base_objects()[("Deployment", "blat-triton")]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == triton["spec"]["selector"]["matchLabels"]
    assert patches[("Deployment", "blat-triton")]["spec"]["replicas"] >= 2
    hpa = patches[("HorizontalPodAutoscaler", "blat-gateway")]["spec"]
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_compose_gateways_point_at_its_milvus_and_triton(tmp_path):
    services = yaml.safe_load((MILVUS / "docker-compose.yml").read_text())["services"]
    for name, read_only in (("gateway-writer", False), ("gateway", True)):
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        env[CONFIG_ENV] = str(ROOT / "deploy" / Path(env[CONFIG_ENV]).relative_to("/app/deploy"))
        s = load_settings(environ=env)
        assert s.index_engine == "milvus" and s.read_only is read_only
        assert s.milvus.uri.split("//")[1].split(":")[0] in services  # a compose service name
        assert s.triton.url.removeprefix("dns:///").split(":")[0] in services
        assert s.triton.load_balancing == "round_robin"
    assert services["triton"]["deploy"]["replicas"] >= 2 and services["gateway"]["deploy"]["replicas"] >= 2
    assert json.loads((ROOT / "deploy" / "gateway.gpu.json").read_text())  # the settings file both mount
