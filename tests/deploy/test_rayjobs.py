"""deploy/ray/: the KubeRay RayJobs that run the batch jobs (embedding, stage 2 captioning) on Kubernetes, checked as
far as can be done without a cluster.

RayJob is a custom resource (ray.io/v1), so the Kubernetes schemas have none for it: its shape is checked here field
by field, and its pod templates are validated strictly as core/v1 PodTemplates against the Kubernetes schemas of
test_rendered.KUBERNETES_VERSIONS. The entrypoint is parsed by the job's own command-line parser, and the actors it
asks for are placed on the worker group's pods with blat_jobs.ray_run's own rule. Nothing is applied to a cluster.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from blat_jobs import ray_run
from tests.deploy.test_rendered import GPU, GPU_NODE_LABEL, GPU_TAINT, KUBERNETES_VERSIONS, load_docs, tolerates

ROOT = Path(__file__).resolve().parents[2]
RAY = ROOT / "deploy" / "ray"
JOBS = {"embed": RAY / "embed-rayjob.yaml", "caption": RAY / "caption-rayjob.yaml"}
# KubeRay's RayJob spec fields used here (ray.io/v1); anything else is a typo until KubeRay is run on it.
RAYJOB_FIELDS = {
    "entrypoint",
    "submissionMode",
    "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
}
CLUSTER_FIELDS = {"rayVersion", "headGroupSpec", "workerGroupSpecs"}
HEAD_FIELDS = {"rayStartParams", "template"}
WORKER_FIELDS = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"}


def rayjob(name: str) -> dict:
    [job] = load_docs(JOBS[name])
    return job


def entrypoint(name: str):
    """The entrypoint's arguments, parsed by the job's own parser (an unknown option fails here)."""
    argv = shlex.split(rayjob(name)["spec"]["entrypoint"])
    if name == "embed":
        from blat_jobs.embed import _parser

        assert argv[:4] == ["python", "-m", "blat_jobs.embed", "run"]
        return _parser().parse_args(argv[3:])
    from blat.pipeline.caption import _parser

    assert argv[:3] == ["python", "-m", "blat.pipeline.caption"]
    return _parser().parse_args(argv[3:])


def pods(job: dict) -> dict[str, dict]:
    spec = job["spec"]["rayClusterSpec"]
    return {
        "head": spec["headGroupSpec"]["template"],
        **{g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]},
    }


def quantity(value) -> float:
    """A CPU or count quantity ("8", 8, "500m")."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_a_rayjob_runs_our_module_on_a_cluster_it_defines(name):
    job = rayjob(name)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    assert set(spec) <= RAYJOB_FIELDS and {"entrypoint", "rayClusterSpec"} <= set(spec), set(spec) - RAYJOB_FIELDS
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] in ("K8sJobMode", "HTTPMode")
    cluster = spec["rayClusterSpec"]
    assert set(cluster) == CLUSTER_FIELDS
    assert set(cluster["headGroupSpec"]) == HEAD_FIELDS
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_FIELDS and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for params in [
        cluster["headGroupSpec"]["rayStartParams"],
        *(g["rayStartParams"] for g in cluster["workerGroupSpecs"]),
    ]:
        assert all(isinstance(v, str) for v in params.values()), "KubeRay takes rayStartParams as strings"
    pin = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["jobs"]
    assert f"ray[data]=={cluster['rayVersion']}" in pin  # the cluster's Ray is the one the job was tested with
    args = entrypoint(name)
    assert args.address == "auto" and args.no_progress and args.wait_resources > 0  # joins; waits for the workers


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(JOBS))
def test_the_pod_templates_validate_as_kubernetes_pod_templates(name, version):
    from kubernetes_validate import utils

    for group, template in pods(rayjob(name)).items():
        as_object = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template}
        try:
            utils.validate(as_object, version, strict=True)
        except utils.ValidationError as e:
            pytest.fail(f"{name}/{group} at {list(e.path)}: {e.message}")
    bad = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": pods(rayjob(name))["gpu"]}
    bad["template"]["spec"]["tolerations"][0]["efect"] = "NoSchedule"  # the validator is live
    with pytest.raises(utils.ValidationError):
        utils.validate(bad, version, strict=True)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_gpu_workers_hold_the_actors_and_the_head_no_gpu(name):
    job, args = rayjob(name), entrypoint(name)
    gpus = args.num_gpus if args.num_gpus is not None else (1.0 if (args.device or "").startswith("cuda") else 0.0)
    assert gpus >= 1, "the job's actors ask for no GPU"
    head = pods(job)["head"]["spec"]
    assert not any(GPU in c.get("resources", {}).get("limits", {}) for c in head["containers"])
    assert not tolerates(head.get("tolerations", []), GPU_TAINT), "the head would take room on GPU nodes"
    nodes = []
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        [container] = spec["containers"]
        limits, requests = container["resources"]["limits"], container["resources"].get("requests", {})
        assert str(requests.get(GPU, limits[GPU])) == str(limits[GPU]), "an extended resource's request = its limit"
        assert spec["nodeSelector"][GPU_NODE_LABEL[0]] == GPU_NODE_LABEL[1]
        assert tolerates(spec["tolerations"], GPU_TAINT)
        nodes += [{"CPU": quantity(limits["cpu"]), "GPU": quantity(limits[GPU])}] * group["replicas"]
    cpus = ray_run.actor_cpus(
        ray_run.RayOptions(workers=args.workers, num_cpus=args.num_cpus), sum(n["CPU"] for n in nodes)
    )
    assert sum(ray_run.actors_fitting(n, cpus, gpus) for n in nodes) >= args.workers  # every actor has a place
    assert sum(n["CPU"] for n in nodes) - args.workers * cpus >= ray_run.DECODE_CPUS  # and decoding has CPUs


@pytest.mark.parametrize("name", sorted(JOBS))
def test_the_job_folder_is_one_shared_volume_on_head_and_workers(name):
    job, args = rayjob(name), entrypoint(name)
    [claim] = [d for d in load_docs(RAY / "storage.yaml") if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every node writes shards into it"
    mounts = set()
    for group, template in pods(job).items():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        [container] = template["spec"]["containers"]
        shared = [m for m in container["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
        assert [volumes[m["name"]]["persistentVolumeClaim"]["claimName"] for m in shared] == [claim["metadata"]["name"]]
        assert not shared[0].get("readOnly"), f"{group}: the job folder must be writable"
        mounts.add(shared[0]["mountPath"])
        assert container["image"] == "blat-jobs:latest"
    [mount] = mounts  # the same path everywhere: the driver and the actors name shards alike
    paths = [args.out] + ([args.manifest, args.bundle] if name == "embed" else [args.scenes, args.checkpoint])
    assert all(PurePosixPath(mount) in PurePosixPath(p).parents for p in paths), paths


def test_the_storage_validates_and_the_image_installs_the_jobs_extra():
    from kubernetes_validate import utils

    for doc in load_docs(RAY / "storage.yaml"):
        utils.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
    dockerfile = (RAY / "Dockerfile.jobs").read_text()
    pin = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["jobs"][0]
    version = pin.split("==")[1]
    assert re.search(rf"^FROM rayproject/ray:{re.escape(version)}-py311", dockerfile, re.M)  # its Ray = the pin
    assert re.search(r'pip install [^\n]*"\.\[model,server,jobs\]"', dockerfile)
    for package in ("blat", "blat_contract", "blat_jobs", "server", "export"):
        assert re.search(rf"^COPY .* {package} {package}$", dockerfile, re.M), package
