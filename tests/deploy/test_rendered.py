"""Both kustomize overlays rendered, as `kubectl apply -k` would apply them, and checked as a whole.

- Rendering: `deploy/k8s` (FAISS: one gateway) and `deploy/milvus/k8s` (read-only search replicas and one writer)
  are rendered here in Python (resources, `labels`, strategic-merge `patches`: the subset of kustomize these two
  kustomizations use; anything else fails loudly). Where `kubectl` or `kustomize` is on PATH, the render is compared
  with the real one, object by object.
- Schema: every rendered object validates against the Kubernetes OpenAPI schemas (strict: no unknown fields) of
  KUBERNETES_VERSIONS, from the pinned `kubernetes-validate` package (offline JSON schemas, Apache-2.0).
- What an operator ships: GPU scheduling for Triton, non-root containers with a read-only root filesystem where
  possible, a PodDisruptionBudget per Deployment, NetworkPolicies, and an Ingress whose paths send every write route
  of the access table (server/blat_gateway/api/) to the writer and the reads to the replicas.
- The CPU-only image (deploy/Dockerfile.cpu) is parsed: no Docker engine here, it is not built.

Nothing is applied to a cluster.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from blat_gateway.api import ENDPOINTS, READ, WRITE
from blat_gateway.settings import CONFIG_ENV, ENV_PREFIX, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = {"faiss": DEPLOY / "k8s", "milvus": DEPLOY / "milvus" / "k8s"}
# The oldest Kubernetes these manifests claim (policy/v1 PDBs with unhealthyPodEvictionPolicy, autoscaling/v2) and
# a recent one.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
DOCKERFILE_GATEWAY = DEPLOY / "Dockerfile.gateway"
DOCKERFILE_CPU = DEPLOY / "Dockerfile.cpu"
GPU = "nvidia.com/gpu"
# The taint GPU node pools carry and the label GPU feature discovery sets (deploy/k8s/triton.yaml).
GPU_TAINT = {"key": GPU, "effect": "NoSchedule"}
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
# Containers allowed a writable root filesystem and their image's user, and why (said in triton.yaml too): NGC's
# tritonserver image runs as root and its Python backend writes under /tmp; not run here to prove otherwise.
IMAGE_USER_CONTAINERS = {"triton"}


# ------------------------------------------------------------------------------------------------ rendering

# Strategic merge: lists merged item by item on these keys (Kubernetes' patchMergeKey for the fields used here);
# every other list is replaced by the patch's, as kustomize does.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
SUPPORTED_KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "labels"}


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def merge_key(field: str, items: list) -> str | None:
    if field == "ports" and items and all(isinstance(i, dict) for i in items):
        return "containerPort" if "containerPort" in items[0] else "port"
    return MERGE_KEYS.get(field)


def strategic_merge(base, patch, field: str = ""):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if isinstance(k, str) and k.startswith("$"):
                raise NotImplementedError(f"patch directive {k} is not rendered by this test")
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = merge_key(field, base + patch)
        if key and all(isinstance(i, dict) and key in i for i in base + patch):
            merged = {i[key]: i for i in base}
            for item in patch:
                merged[item[key]] = strategic_merge(merged[item[key]], item, field) if item[key] in merged else item
            return list(merged.values())
    return copy.deepcopy(patch)


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize directory` emits (in file order)."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(k) - SUPPORTED_KUSTOMIZATION_FIELDS
    assert not unsupported, f"{directory}: kustomization fields this renderer does not implement: {unsupported}"
    out: list[dict] = []
    for ref in k.get("resources", []):
        target = (directory / ref).resolve()
        out += render(target) if target.is_dir() else load_docs(target)
    for patch in k.get("patches", []):
        assert set(patch) == {"path"}, f"{directory}: only file patches are rendered here: {patch}"
        for p in load_docs(directory / patch["path"]):
            idx = [
                i for i, o in enumerate(out) if (o["kind"], o["metadata"]["name"]) == (p["kind"], p["metadata"]["name"])
            ]
            assert len(idx) == 1, f"{patch['path']}: patches {p['kind']}/{p['metadata']['name']}, found {len(idx)}"
            out[idx[0]] = strategic_merge(out[idx[0]], p)
    for spec in k.get("labels", []):
        assert set(spec) == {"pairs"}, f"{directory}: labels with selectors/templates are not rendered here: {spec}"
        for o in out:
            o.setdefault("metadata", {}).setdefault("labels", {}).update(spec["pairs"])
    return out


_RENDERED: dict[str, list[dict]] = {}


def rendered(overlay: str) -> list[dict]:
    if overlay not in _RENDERED:
        _RENDERED[overlay] = render(OVERLAYS[overlay])
    return copy.deepcopy(_RENDERED[overlay])


def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"matchExpressions are not evaluated here: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def gateway_deployments(objs: list[dict]) -> list[dict]:
    return [
        d
        for d in of_kind(objs, "Deployment")
        if any(e["name"] == CONFIG_ENV for c in pod_spec(d)["containers"] for e in c.get("env", []))
    ]


def triton_deployment(objs: list[dict]) -> dict:
    [d] = [
        d for d in of_kind(objs, "Deployment") if pod_spec(d)["containers"][0].get("command", [""])[0] == "tritonserver"
    ]
    return d


def container_port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named_ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named_ports, f"{port!r} is not a named port of {container['name']}"
    return named_ports[port]


def settings_of(objs: list[dict], deployment: dict, tmp_path: Path):
    """The gateway's settings: the ConfigMap's file named by BLAT_SERVER_CONFIG and the literal BLAT_SERVER_*
    values (Secret references left out: the Secret is not part of the render)."""
    container = pod_spec(deployment)["containers"][0]
    env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    mount = next(
        m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) in PurePosixPath(env[CONFIG_ENV]).parents
    )
    volume = {v["name"]: v for v in pod_spec(deployment)["volumes"]}[mount["name"]]
    rel = str(PurePosixPath(env[CONFIG_ENV]).relative_to(mount["mountPath"]))
    key = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}.get(rel, rel)
    config = tmp_path / f"{deployment['metadata']['name']}.json"
    config.write_text(named(objs, "ConfigMap", volume["configMap"]["name"])["data"][key])
    return load_settings(environ={**env, CONFIG_ENV: str(config)})


def normalized(obj):
    """For comparing renders: lists of named items in name order (merge order is not meaning)."""
    if isinstance(obj, dict):
        return {k: normalized(v) for k, v in obj.items()}
    if isinstance(obj, list):
        items = [normalized(i) for i in obj]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: str(i["name"]))
        return items
    return obj


# ------------------------------------------------------------------------------------------------ rendering tests


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_render_matches_kustomize_where_it_is_installed(overlay):
    ours = {(o["kind"], o["metadata"]["name"]): normalized(o) for o in rendered(overlay)}
    assert len(ours) == len(rendered(overlay)), "an object is defined twice"
    if shutil.which("kubectl"):
        argv = ["kubectl", "kustomize", str(OVERLAYS[overlay])]
    elif shutil.which("kustomize"):
        argv = ["kustomize", "build", str(OVERLAYS[overlay])]
    else:
        pytest.skip("neither kubectl nor kustomize on PATH: the Python render is not compared with kustomize's")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    theirs = {(o["kind"], o["metadata"]["name"]): normalized(o) for o in yaml.safe_load_all(out) if o}
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert ours[key] == theirs[key], f"{key}: the Python render differs from {argv[0]}'s"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_rendered_object_validates_against_the_kubernetes_schema(overlay, version):
    from kubernetes_validate import utils

    objs = rendered(overlay)
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy", "Ingress"} <= {
        o["kind"] for o in objs
    }
    for o in objs:
        # raises SchemaNotFoundError for a kind/apiVersion the version lacks, ValidationError for a wrong field
        try:
            utils.validate(o, version, strict=True)
        except utils.ValidationError as e:
            pytest.fail(f"{overlay}: {o['kind']}/{o['metadata']['name']} at {list(e.path)}: {e.message}")


def test_the_schema_validation_rejects_a_wrong_field():
    """The validator is live: a misspelt field and a wrong type in the Triton Deployment are refused."""
    from kubernetes_validate import utils

    triton = triton_deployment(rendered("milvus"))
    utils.validate(triton, KUBERNETES_VERSIONS[0], strict=True)
    bad = copy.deepcopy(triton)
    pod_spec(bad)["tolerations"][0]["efect"] = "NoSchedule"
    with pytest.raises(utils.ValidationError):
        utils.validate(bad, KUBERNETES_VERSIONS[0], strict=True)
    bad = copy.deepcopy(triton)
    pod_spec(bad)["nodeSelector"] = {GPU_NODE_LABEL[0]: True}  # a bool, not the string "true"
    with pytest.raises(utils.ValidationError):
        utils.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


def test_the_writer_runs_the_same_command_and_image_as_the_readers():
    objs = rendered("milvus")
    containers = [pod_spec(d)["containers"][0] for d in gateway_deployments(objs)]
    assert len(containers) == 2
    assert {json.dumps(c["command"]) for c in containers} == {json.dumps(["python", "-m", "blat_gateway"])}
    assert len({c["image"] for c in containers}) == 1


# ------------------------------------------------------------------------------------------------ GPU scheduling


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, "", taint["effect"]):
            continue
        if t.get("operator", "Equal") == "Exists" and t.get("key") in (None, "", taint["key"]):
            return True
        if t.get("operator", "Equal") == "Equal" and t.get("key") == taint["key"]:
            if t.get("value", "") == taint.get("value", ""):
                return True
    return False


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_triton_is_scheduled_on_a_gpu_node_with_one_gpu_and_the_gateways_are_not(overlay):
    objs = rendered(overlay)
    triton = triton_deployment(objs)
    spec = pod_spec(triton)
    [container] = spec["containers"]
    assert str(container["resources"]["limits"][GPU]) == "1"
    requests = container["resources"].get("requests", {})
    assert GPU not in requests or str(requests[GPU]) == "1", "an extended resource's request must equal its limit"
    assert spec.get("nodeSelector", {}).get(GPU_NODE_LABEL[0]) == GPU_NODE_LABEL[1]
    assert tolerates(spec.get("tolerations", []), GPU_TAINT), "Triton does not tolerate the GPU nodes' taint"
    assert not tolerates([{"key": GPU, "operator": "Exists", "effect": "NoExecute"}], GPU_TAINT)  # the matcher
    for d in gateway_deployments(objs):
        gw = pod_spec(d)
        assert not any(GPU in c["resources"].get("limits", {}) for c in gw["containers"]), "the gateway holds no GPU"
        assert not tolerates(gw.get("tolerations", []), GPU_TAINT), "the gateway would take room on GPU nodes"


# ------------------------------------------------------------------------------------------------ security


def dockerfile_user(path: Path, stage: int = -1) -> str:
    return [args for ins, args in dockerfile_stages(path)[stage] if ins == "USER"][-1]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_containers_run_without_privileges_and_gateways_as_the_images_non_root_user(overlay, tmp_path):
    objs = rendered(overlay)
    image_uid = int(dockerfile_user(DOCKERFILE_GATEWAY).split(":")[0])
    assert image_uid != 0
    gateways = gateway_deployments(objs)
    assert gateways
    for d in of_kind(objs, "Deployment"):
        spec, name = pod_spec(d), d["metadata"]["name"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in spec["containers"]:
            sc = {**pod_sc, **c.get("securityContext", {})}
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}/{c['name']}: capabilities kept"
            if c["name"] in IMAGE_USER_CONTAINERS:
                continue
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser") == image_uid, f"{name}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}: writable root filesystem"
    for d in gateways:  # read-only root: what the gateway writes is on volumes
        spec, name = pod_spec(d), d["metadata"]["name"]
        [c] = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], f"{name}: /tmp is not an emptyDir"
        index_dir = PurePosixPath(settings_of(objs, d, tmp_path).index_dir)
        writable = [p for p, m in mounts.items() if not m.get("readOnly") and PurePosixPath(p) in index_dir.parents]
        assert writable, f"{name}: the index directory {index_dir} is on no writable volume"
        if "persistentVolumeClaim" in volumes[mounts[writable[0]]["name"]]:
            assert spec["securityContext"].get("fsGroup") == image_uid, f"{name}: the PVC is not writable for it"
    # The exception is Triton's only: it is named, and it is the Triton container.
    assert {c["name"] for c in pod_spec(triton_deployment(objs))["containers"]} == IMAGE_USER_CONTAINERS


# ------------------------------------------------------------------------------------------------ disruption budgets


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_deployment_has_one_pdb_that_never_blocks_a_drain_and_keeps_replicas_serving(overlay):
    objs = rendered(overlay)
    pdbs = of_kind(objs, "PodDisruptionBudget")
    for d in of_kind(objs, "Deployment"):
        mine = [p for p in pdbs if selects(p["spec"]["selector"], pod_labels(d))]
        assert len(mine) == 1, f"{d['metadata']['name']}: {len(mine)} PodDisruptionBudgets select its pods"
        spec, replicas = mine[0]["spec"], d["spec"]["replicas"]
        if "maxUnavailable" in spec:
            allowed = int(spec["maxUnavailable"])
        else:
            allowed = replicas - int(spec["minAvailable"])
        assert allowed >= 1, f"{d['metadata']['name']}: the PDB allows no eviction: node drains would hang"
        if replicas >= 2:
            assert replicas - allowed >= 1, f"{d['metadata']['name']}: a drain may take every replica at once"
        # it selects no other Deployment's pods (a shared PDB would count them together)
        others = [o for o in of_kind(objs, "Deployment") if o is not d and selects(spec["selector"], pod_labels(o))]
        assert not others, f"{mine[0]['metadata']['name']} also selects {[o['metadata']['name'] for o in others]}"


# ------------------------------------------------------------------------------------------------ network policies


def ingress_allowed(objs: list[dict], target: dict, port: int, source: dict | None) -> bool:
    """Would a connection from a pod with labels `source` (None: a pod in another namespace) reach `port` of
    `target`'s pods? Kubernetes' rules: policies selecting the pod are OR-ed; an unselected pod is open."""
    labels, [container] = pod_labels(target), pod_spec(target)["containers"]
    policies = [p for p in of_kind(objs, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]
    policies = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not policies:
        return True
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(container_port(container, pp["port"]) == port for pp in ports):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    raise NotImplementedError("ipBlock peers are not evaluated here")
                ns, pod = peer.get("namespaceSelector"), peer.get("podSelector")
                if ns is None and source is None:
                    continue  # a podSelector alone means this namespace
                if ns is not None:
                    assert ns == {}, "only the any-namespace selector is evaluated here"
                if pod is None or selects(pod, source or {}):
                    return True
    return False


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_network_policies_isolate_every_pod_and_let_only_gateways_reach_triton(overlay, tmp_path):
    objs = rendered(overlay)
    triton = triton_deployment(objs)
    [triton_container] = pod_spec(triton)["containers"]
    stranger = {"app.kubernetes.io/name": "someone-else"}
    for d in of_kind(objs, "Deployment"):
        assert any(selects(p["spec"]["podSelector"], pod_labels(d)) for p in of_kind(objs, "NetworkPolicy")), (
            f"{d['metadata']['name']}: no NetworkPolicy selects its pods (all traffic is let in)"
        )
        [c] = pod_spec(d)["containers"]
        undeclared = max(p["containerPort"] for p in c["ports"]) + 1
        assert not ingress_allowed(objs, d, undeclared, stranger), f"{d['metadata']['name']}: port {undeclared} open"
    for d in gateway_deployments(objs):
        settings = settings_of(objs, d, tmp_path)
        host, port = settings.triton.url.removeprefix("dns:///").rsplit(":", 1)
        [service] = [s for s in of_kind(objs, "Service") if s["metadata"]["name"] == host]
        sp = next(p for p in service["spec"]["ports"] if p["port"] == int(port))
        grpc = container_port(triton_container, sp.get("targetPort", sp["port"]))
        assert ingress_allowed(objs, triton, grpc, pod_labels(d)), f"{d['metadata']['name']} cannot reach Triton"
        assert not ingress_allowed(objs, triton, grpc, stranger), "any pod reaches Triton's inference port"
        assert not ingress_allowed(objs, triton, grpc, None), "pods of other namespaces reach Triton's inference port"
        # the gateway's own ports are open to the Ingress controller (another namespace) and to in-cluster clients
        for p in (settings.http_port, settings.grpc_port):
            assert ingress_allowed(objs, d, p, None) and ingress_allowed(objs, d, p, stranger), (d, p)
    metrics = container_port(triton_container, "metrics")
    assert ingress_allowed(objs, triton, metrics, None), "Prometheus (another namespace) cannot scrape Triton"


# ------------------------------------------------------------------------------------------------ Ingress


# Reads only the writer can answer, so their paths go to it as well (deploy/README.md, "Ingress"):
WRITER_READS = {
    "rebuild_status": "a rebuild job runs in the writer's process; a replica knows no job ids",
    "item_audio": "uploaded audio is on the writer's volume (the replicas have none)",
}


def sample_path(template: str) -> str:
    """A request path for a route template: {x:path} may hold slashes, {x} one segment."""
    return re.sub(r"\{[^}:]+\}", "id-1", re.sub(r"\{[^}]+:path\}", "dir/id-1.wav", template))


def ingress_backend(ingress: dict, path: str) -> dict:
    """The backend Kubernetes' Ingress semantics pick for `path` (rules without host): Exact before Prefix, the
    longest matching Prefix, Prefix matching whole path elements (/v1/items matches /v1/items/x, not /v1/itemsx)."""
    [rule] = ingress["spec"]["rules"]
    best, best_rank = None, None
    for p in rule["http"]["paths"]:
        kind, want = p["pathType"], p["path"]
        if kind == "Exact":
            rank = (1, len(want)) if path == want else None
        elif kind == "Prefix":
            elements = [e for e in want.split("/") if e]
            rank = (0, len(elements)) if [e for e in path.split("/") if e][: len(elements)] == elements else None
        else:
            raise AssertionError(f"pathType {kind} is controller-specific: use Exact or Prefix")
        if rank is not None and (best_rank is None or rank > best_rank):
            best, best_rank = p["backend"], rank
    assert best is not None, f"no Ingress path matches {path}"
    return best


def backend_deployment(objs: list[dict], backend: dict) -> tuple[dict, int]:
    """(the Deployment a backend reaches, the container port) through its Service."""
    service = named(objs, "Service", backend["service"]["name"])
    want = backend["service"]["port"]
    sp = next(
        p for p in service["spec"]["ports"] if p.get("name") == want.get("name") or p["port"] == want.get("number")
    )
    [d] = [d for d in of_kind(objs, "Deployment") if service["spec"]["selector"].items() <= pod_labels(d).items()]
    return d, container_port(pod_spec(d)["containers"][0], sp.get("targetPort", sp["port"]))


def writer_route(ep) -> bool:
    """The rule: a route's path goes to the writer when a route on the same path template writes (an Ingress
    routes by path, not method), or when it is one of WRITER_READS."""
    write_paths = {e.path for e in ENDPOINTS if e.route and e.scope == WRITE}
    return ep.path in write_paths or ep.name in WRITER_READS


def test_the_ingress_rule_has_routes_on_both_sides_and_its_exceptions_exist():
    routes = [ep for ep in ENDPOINTS if ep.route]
    by_name = {ep.name: ep for ep in routes}
    for name in WRITER_READS:
        assert name in by_name and by_name[name].scope == READ, f"{name}: not a read route of the access table"
    assert any(ep.scope == WRITE for ep in routes) and any(not writer_route(ep) for ep in routes)
    # paths shared by a read and a write method: these reads go to the writer (it serves reads too)
    shared = {ep.path for ep in routes if ep.scope != WRITE and writer_route(ep) and ep.name not in WRITER_READS}
    assert "/v1/items" in shared, shared  # GET lists, POST adds
    assert any(ep.route == "WS /v1/tag/stream" and ep.scope == READ and not writer_route(ep) for ep in routes)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_ingress_sends_write_routes_to_the_writer_and_reads_to_the_replicas(overlay, tmp_path):
    objs = rendered(overlay)
    [ingress] = of_kind(objs, "Ingress")
    gateways = {d["metadata"]["name"]: (d, settings_of(objs, d, tmp_path)) for d in gateway_deployments(objs)}
    writers = [n for n, (_, s) in gateways.items() if not s.read_only]
    readers = [n for n, (_, s) in gateways.items() if s.read_only]
    assert len(writers) == 1, "one writer"
    expected_reader = readers or writers  # with FAISS the one gateway serves everything
    assert len(expected_reader) == 1
    if overlay == "milvus":
        assert readers, "the Milvus overlay has read-only replicas"
    checked = 0
    for ep in ENDPOINTS:
        if not ep.route:
            continue
        path = sample_path(ep.path)
        deployment, port = backend_deployment(objs, ingress_backend(ingress, path))
        name = deployment["metadata"]["name"]
        want = writers[0] if writer_route(ep) else expected_reader[0]
        assert name == want, f"{ep.route} ({ep.scope}) goes to {name}, the rule says {want}"
        assert port == gateways[name][1].http_port, f"{ep.route}: the backend is not the gateway's HTTP port"
        checked += 1
    assert checked == len([ep for ep in ENDPOINTS if ep.route])
    # unknown paths (and the page's own files) go to the replicas; a path merely starting like a write path too
    assert (
        backend_deployment(objs, ingress_backend(ingress, "/no/such/route"))[0]["metadata"]["name"]
        == (expected_reader[0])
    )
    assert (
        backend_deployment(objs, ingress_backend(ingress, "/v1/itemsx"))[0]["metadata"]["name"] == (expected_reader[0])
    )


def nginx_size(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert m, value
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


def test_ingress_admits_the_largest_upload_and_the_longest_stream(tmp_path):
    objs = rendered("faiss")
    [ingress] = of_kind(objs, "Ingress")
    [d] = gateway_deployments(objs)
    limits = settings_of(objs, d, tmp_path).limits
    annotations = ingress["metadata"]["annotations"]
    assert nginx_size(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) >= limits.max_upload_bytes
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) >= limits.stream_max_s, key


# ------------------------------------------------------------------------------------------------ the CPU image


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """Stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    lines: list[str] = []
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        lines.append(raw.rstrip().removesuffix("\\").strip())
        if raw.rstrip().endswith("\\"):
            continue
        text = " ".join(lines)
        lines = []
        ins, _, args = text.partition(" ")
        if ins.upper() == "FROM":
            stages.append([])
        stages[-1].append((ins.upper(), args.strip()))
    return stages


def docker_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for ins, args in stage:
        if ins == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(args)))
    return env


def test_cpu_image_serves_the_embedded_default_on_8080_as_a_non_root_user():
    stages = dockerfile_stages(DOCKERFILE_CPU)
    assert len(stages) == 2, "an export stage (torch) and the torch-free runtime"
    export, final = stages
    export_name = export[0][1].split()[-1]
    runs = lambda stage: " ".join(a for i, a in stage if i == "RUN")  # noqa: E731

    # the runtime: non-root, the gateway's command, port 8080 published by EXPOSE and listened on, on all interfaces
    user = [a for i, a in final if i == "USER"][-1]
    uid = int(user.split(":")[0])
    assert uid != 0 and [i for i, _ in final].index("USER") > max(n for n, (i, _) in enumerate(final) if i == "RUN"), (
        "USER comes after the last RUN (the root-only installs)"
    )
    assert not any(i == "ENTRYPOINT" for i, _ in final)
    cmd = json.loads([a for i, a in final if i == "CMD"][-1])
    gateway_cmd = json.loads([a for i, a in dockerfile_stages(DOCKERFILE_GATEWAY)[-1] if i == "CMD"][-1])
    assert cmd == gateway_cmd == ["python", "-m", "blat_gateway"]
    env = docker_env(final)
    assert all(k.startswith(ENV_PREFIX) for k in env), env
    settings = load_settings(environ=env)
    exposed = {int(p.split("/")[0]) for i, a in final if i == "EXPOSE" for p in a.split()}
    assert settings.http_port == 8080 and {8080, settings.grpc_port} <= exposed
    assert settings.host == "0.0.0.0", "inside a container the gateway must listen on all interfaces"
    assert settings.backend == "onnxruntime" and settings.index_engine == "faiss", "CPU only: no Triton, no Milvus"
    assert "torch" not in runs(final) and '".[server]"' in runs(final), "the runtime installs the server extra only"

    # the embedded default: the Makefile's release, exported in the first stage, copied to the settings' bundle
    makefile = (ROOT / "Makefile").read_text()
    release = re.search(r"^RELEASE \?= (\S+)$", makefile, re.M).group(1)
    copied = {
        shlex.split(a)[-1]: shlex.split(a)[-2]
        for i, a in final
        if i == "COPY" and a.startswith(f"--from={export_name}")
    }
    assert copied.get(settings.bundle) == settings.bundle
    assert f"blat_export bundle --release {release} --out {settings.bundle}" in runs(export)
    # the seed index, as `make run`: the manifest is built in the export stage, copied, and its folder may be read
    seed = PurePosixPath(settings.seed_manifest).parent
    assert copied.get(str(seed)) == str(seed) and str(seed) in settings.ingest_roots
    assert f"--index-seed {settings.seed_manifest}" in runs(export) and f"--out {seed}" in runs(export)
    # the index is written on a volume the user owns (the root filesystem can stay read-only)
    volumes = [a for i, a in final if i == "VOLUME"]
    index_dir = PurePosixPath(settings.index_dir)
    assert any(PurePosixPath(v) in index_dir.parents for v in volumes), "the index directory is on no VOLUME"
    assert f"chown {uid}:{uid} {volumes[0]}" in runs(final) or f"chown {uid} {volumes[0]}" in runs(final)

    # the export stage installs what the release names, pinned as the release records and pyproject pins them
    manifest = json.loads((ROOT / release / "release.json").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pkg in manifest["packages"]:
        pin = f"{pkg['distribution']}=={pkg['version']}"
        assert pin in runs(export) or f'"{pin}"' in pyproject, f"{pin} is not installed in the export stage"
    torch_pin = re.search(r'"(torch==[^"]+)"', pyproject).group(1)
    assert torch_pin in runs(export), f"the export stage's torch is not pyproject's {torch_pin}"
    assert '".[model,export]"' in runs(export)
    # the seed corpus is fetched with `apt-get download` (blat/pipeline/sources.py): apt's lists must be there
    assert "apt-get update" in runs(export) and "/var/lib/apt/lists" not in runs(export)

    # every COPY source exists in the repository (the build context); nothing is fetched at run time
    for stage in stages:
        for i, a in stage:
            if i == "COPY" and not a.startswith("--from="):
                for src in shlex.split(a)[:-1]:
                    assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    text = DOCKERFILE_CPU.read_text()
    assert not re.search(r"(curl|wget)[^\n]*\|\s*(ba)?sh", text), "no piping downloads into a shell"
    assert not any(i in ("ENTRYPOINT", "ADD") for s in stages for i, _ in s), "no entrypoint script, no ADD of URLs"


def test_gateway_image_runs_as_a_numeric_non_root_user():
    [final] = dockerfile_stages(DOCKERFILE_GATEWAY)[-1:]
    user = [a for i, a in final if i == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER {user}: numeric (runAsNonRoot checks a number)"
    last_run = max(n for n, (i, _) in enumerate(final) if i == "RUN")
    assert [i for i, _ in final].index("USER") > last_run
