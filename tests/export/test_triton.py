"""blat_export.triton: the repository writer (configs parsed with Triton's own model_config proto), and a real
tritonserver (the nvidia-pytriton wheel's) serving the CPU flavour, checked against in-process ONNX Runtime.
"""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from blat_contract.beam import DecodingOptions, beam_search
from blat_contract.bundle import read_bundle, sha256_file
from blat_contract.vocab import Vocabulary
from blat_export import triton
from blat_export.triton import (
    CAPTIONER,
    RepositoryError,
    TritonSettings,
    TritonStartError,
    TritonUnavailable,
    launch_cpu_server,
    read_repository,
    write_repository,
)
from blat_export.triton import (
    GRAPHS as ALL_GRAPHS,
)

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc")

ATOL = 1e-5  # Triton vs in-process ONNX Runtime on the same graphs
GRAPHS = tuple(g for g in ALL_GRAPHS if g != "audio_tagger")  # the tiny bundle's tower has no supervised head
DTYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def parse(repo, model):
    return text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())


def io_of(config):
    """(name, dtype, dims, reshaped) of every input and output: what clients see."""
    return [
        (t.name, mc.DataType.Name(t.data_type), list(t.dims), t.HasField("reshape"))
        for t in (*config.input, *config.output)
    ]


def relabel(bundle, dst, version):
    """A copy of `bundle` that claims another version (a different bundle.json, same graphs)."""
    shutil.copytree(bundle, dst)
    manifest = json.loads((dst / "bundle.json").read_text())
    (dst / "bundle.json").write_text(json.dumps({**manifest, "version": version}))
    return dst


def config_sizes(repo):
    """D, C, d, V as the configs state them."""
    decoder = parse(repo, "captioner_decoder")
    return {
        "D": parse(repo, "text_encoder").output[0].dims[0],
        "C": parse(repo, "audio_encoder").output[1].dims[1],
        "d": decoder.input[3].dims[0],
        "V": decoder.output[0].dims[0],
    }


def onnx_sizes(bundle):
    """D, C, d, V as ONNX Runtime reports the bundle's graph outputs."""
    out = lambda g, i: ort.InferenceSession(str(bundle / f"{g}.onnx")).get_outputs()[i].shape[-1]  # noqa: E731
    return {
        "D": out("text_encoder", 0),
        "C": out("audio_encoder", 1),
        "d": out("captioner_encoder", 2),
        "V": out("captioner_decoder", 0),
    }


# ------------------------------------------------------------------------------------------------------- writer


def test_a_tagger_bundle_gets_the_audio_tagger_model(yamnet_bundle, tmp_path):
    repo = write_repository(yamnet_bundle, tmp_path / "repo")
    assert sorted(p.name for p in repo.iterdir()) == sorted([*ALL_GRAPHS, CAPTIONER])
    config = parse(repo, "audio_tagger")
    assert [o.name for o in config.output] == ["class_probs"] and list(config.output[0].dims) == [521]
    assert [i.name for i in config.input] == ["frames", "frame_lengths"]
    assert list(config.input[0].dims) == [-1, 1024]


def test_gpu_flavour_configs(tiny_bundle, tmp_path):
    repo = write_repository(tiny_bundle, tmp_path / "repo", tensorrt=True, max_batch_size=16, max_queue_delay_us=500)
    manifest = read_bundle(tiny_bundle)
    assert sorted(p.name for p in repo.iterdir()) == sorted([*GRAPHS, CAPTIONER])
    for model in GRAPHS:
        config, graph = parse(repo, model), manifest.graphs[model]
        assert config.name == model and config.backend == "onnxruntime" and config.max_batch_size == 16
        assert [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == ["KIND_GPU"]
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert config.version_policy.latest.num_versions == 2
        specs = (*graph.inputs, *graph.outputs)
        assert [(n, t) for n, t, _, _ in io_of(config)] == [(s.name, DTYPES[s.dtype]) for s in specs]
        for (_, _, dims, reshaped), spec in zip(io_of(config), specs):  # batch axis implicit, (B,) -> [1] + reshape
            assert reshaped == (len(spec.shape) == 1)
            assert len(dims) == max(1, len(spec.shape) - 1)
            assert all(d == -1 for d, a in zip(dims, spec.shape[1:]) if a in ("N", "T", "L"))
        (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
        for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
            shapes = dict(item.split(":") for item in trt.parameters[key].split(","))
            assert list(shapes) == [s.name for s in graph.inputs]
            assert all(len(shapes[s.name].split("x")) == len(s.shape) for s in graph.inputs)
        (warm,) = config.model_warmup
        assert warm.batch_size == 1 and sorted(warm.inputs) == sorted(s.name for s in graph.inputs)
        for name, sample in warm.inputs.items():
            if sample.input_data_file:  # integer inputs: one int64 per element of dims
                assert (repo / model / "warmup" / name).stat().st_size == 8 * int(np.prod(sample.dims))
            else:
                assert sample.zero_data
        version = repo / model / "1"
        assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "version_info.json"]
        assert sha256_file(version / "model.onnx") == manifest.files[graph.file]
    assert config_sizes(repo) == onnx_sizes(tiny_bundle)  # model sizes are the bundle's, dynamic axes -1
    assert list(parse(repo, "audio_pool").input[0].dims) == [-1, config_sizes(repo)["C"]]

    captioner = parse(repo, CAPTIONER)
    assert captioner.backend == "python" and captioner.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert [i.name for i in captioner.input] == ["waveform", "lengths", "tags"] and captioner.input[2].optional
    assert [(o.name, mc.DataType.Name(o.data_type)) for o in captioner.output] == [
        ("captions", "TYPE_STRING"),
        ("scores", "TYPE_FP32"),
    ]
    assert captioner.parameters["beam_size"].string_value == str(manifest.captioner.beam_size)
    files = {str(p.relative_to(repo / CAPTIONER / "1")) for p in (repo / CAPTIONER / "1").rglob("*") if p.is_file()}
    assert files == {
        "model.py",
        "vocab.json",
        "version_info.json",
        "blat_contract/__init__.py",
        "blat_contract/beam.py",
        "blat_contract/vocab.py",
    }


def test_cpu_flavour_mirrors_gpu(tiny_bundle, tmp_path):
    gpu = write_repository(tiny_bundle, tmp_path / "gpu")
    cpu = write_repository(tiny_bundle, tmp_path / "cpu", flavor="cpu")
    for model in [*GRAPHS, CAPTIONER]:
        g, c = parse(gpu, model), parse(cpu, model)
        assert io_of(c) == io_of(g) and c.max_batch_size == g.max_batch_size
        assert c.dynamic_batching == g.dynamic_batching and c.model_warmup == g.model_warmup
        assert c.backend == "python" and c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert not c.optimization.execution_accelerators.gpu_execution_accelerator
        assert (cpu / model / "1" / "model.py").is_file()
    assert config_sizes(cpu) == config_sizes(gpu)
    assert config_sizes(cpu)["V"] == len(Vocabulary.from_json((tiny_bundle / "vocab.json").read_text()))


def test_versions_roll_out_side_by_side(tiny_bundle, tmp_path):
    repo = tmp_path / "repo"
    write_repository(tiny_bundle, repo, flavor="cpu")
    write_repository(tiny_bundle, repo, flavor="cpu", max_batch_size=4)  # the newest version holds it: configs only
    assert list(read_repository(repo)) == [1] and parse(repo, "audio_encoder").max_batch_size == 4
    write_repository(relabel(tiny_bundle, tmp_path / "b2", "v2"), repo, flavor="cpu")
    write_repository(relabel(tiny_bundle, tmp_path / "b3", "v3"), repo, flavor="cpu")
    versions = read_repository(repo)
    assert list(versions) == [1, 2, 3]
    assert {info["bundle"] for info in versions[3].values()} == {"tiny@v3"}
    assert sorted(versions[3]) == sorted([*GRAPHS, CAPTIONER])
    assert versions[3]["audio_encoder"]["bundle_sha256"] == sha256_file(tmp_path / "b3" / "bundle.json")
    with pytest.raises(RepositoryError, match="version 2 exists"):
        write_repository(relabel(tiny_bundle, tmp_path / "b4", "v4"), repo, flavor="cpu", version=2)
    assert not list(tmp_path.glob(".repo.staging-*"))  # staging directories are cleaned up


def test_other_flavour_or_signature_needs_replace(tiny_bundle, tmp_path):
    repo = write_repository(tiny_bundle, tmp_path / "repo", flavor="cpu")
    with pytest.raises(RepositoryError, match="replace=True"):
        write_repository(tiny_bundle, repo, flavor="gpu")
    write_repository(tiny_bundle, repo, flavor="gpu", replace=True)
    assert list(read_repository(repo)) == [2]
    assert {info["flavor"] for info in read_repository(repo)[2].values()} == {"gpu"}
    assert parse(repo, "audio_encoder").backend == "onnxruntime"


def test_template_drift_is_caught(tiny_bundle, tmp_path, monkeypatch):
    templates = shutil.copytree(triton.TEMPLATES, tmp_path / "templates", ignore=shutil.ignore_patterns("README.md"))
    path = templates / "audio_pool" / "config.pbtxt.tmpl"
    path.write_text(path.read_text().replace('"frame_lengths"', '"lengths"'))
    monkeypatch.setattr(triton, "TEMPLATES", templates)
    with pytest.raises(RepositoryError, match="audio_pool"):
        write_repository(tiny_bundle, tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or not read_repository(tmp_path / "repo")


def test_settings_are_checked():
    with pytest.raises(ValueError, match="tensorrt"):
        TritonSettings(flavor="cpu", tensorrt=True)
    with pytest.raises(ValueError, match="flavor"):
        TritonSettings(flavor="tpu")


def test_missing_wheel_is_unavailable_not_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(triton, "find_spec", lambda name: None)
    with pytest.raises(TritonUnavailable, match="nvidia-pytriton"):
        launch_cpu_server(tmp_path)


# ---------------------------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    repo = write_repository(
        tiny_bundle, tmp_path_factory.mktemp("triton") / "repo", flavor="cpu", intra_op_threads=1, max_batch_size=16
    )
    try:
        process = launch_cpu_server(repo, timeout_s=90)
    except TritonUnavailable as e:
        pytest.skip(f"the nvidia-pytriton tritonserver cannot run here: {e}")
    with process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.fixture(scope="module")
def sessions(tiny_bundle):
    return {g: ort.InferenceSession(str(tiny_bundle / f"{g}.onnx"), providers=["CPUExecutionProvider"]) for g in GRAPHS}


def tensors(inputs):
    """name -> numpy (batch axis first; the bundle's (B,) tensors go as (B, 1)) -> tritonclient inputs."""
    out = []
    for name, x in inputs.items():
        t = grpcclient.InferInput(name, list(x.shape), "FP32" if x.dtype == np.float32 else "INT64")
        t.set_data_from_numpy(x)
        out.append(t)
    return out


def infer(client, model, inputs, **kwargs):
    return client.infer(model, tensors(inputs), **kwargs)


def check_graph(client, sessions, model, feed):
    """Triton's answer to `feed` equals ONNX Runtime's on the bundle graph; returns the reference outputs."""
    sent = {k: v[:, None] if v.ndim == 1 else v for k, v in feed.items()}
    result = infer(client, model, sent)
    session = sessions[model]
    reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    for name, ref in reference.items():
        got = result.as_numpy(name)
        got = got.reshape(ref.shape) if got.shape == (*ref.shape, 1) else got
        assert got.shape == ref.shape and got.dtype == ref.dtype, name
        assert np.abs(got.astype(np.float64) - ref).max() <= ATOL, name
    return reference


def audio_batch(lengths, seed=0):
    rng = np.random.default_rng(seed)
    wave = np.zeros((len(lengths), max(lengths)), np.float32)  # zero-padded, true lengths alongside
    for i, n in enumerate(lengths):
        wave[i, :n] = 0.2 * rng.standard_normal(n)
    return wave, np.array(lengths, np.int64)


def tags_batch(n, seed=0):
    return (np.random.default_rng(seed).random((n, 527)) < 0.02).astype(np.float32)


def reference_captions(sessions, vocab, wave, lengths, tags, options):
    memory, memory_lengths, tag_vector = sessions["captioner_encoder"].run(
        None, {"waveform": wave, "lengths": lengths, "tags": tags}
    )

    def step(tokens, origin):
        return sessions["captioner_decoder"].run(
            None,
            {
                "tokens": tokens,
                "memory": memory[origin],
                "memory_lengths": memory_lengths[origin],
                "tag_vector": tag_vector[origin],
            },
        )[0]

    hyps = beam_search(step, len(wave), options)
    return [[vocab.decode(h.tokens) for h in hs] for hs in hyps], np.array([[h.log_prob for h in hs] for hs in hyps])


@pytest.fixture(scope="module")
def vocab(tiny_bundle):
    return Vocabulary.from_json((tiny_bundle / "vocab.json").read_text())


@pytest.mark.slow
def test_every_graph_matches_onnxruntime(client, sessions):
    assert all(client.is_model_ready(m) for m in [*GRAPHS, CAPTIONER])
    wave, lengths = audio_batch([16000, 9000, 3001])  # unequal lengths in one batch
    ref = check_graph(client, sessions, "audio_encoder", {"waveform": wave, "lengths": lengths})
    check_graph(client, sessions, "audio_pool", {"frames": ref["frames"], "frame_lengths": ref["frame_lengths"] - 1})
    rng = np.random.default_rng(1)
    mask = (np.arange(9)[None] < np.array([[9], [4], [2]])).astype(np.int64)
    check_graph(
        client, sessions, "text_encoder", {"input_ids": rng.integers(1000, 2000, (3, 9)) * mask, "attention_mask": mask}
    )
    enc = check_graph(
        client, sessions, "captioner_encoder", {"waveform": wave, "lengths": lengths, "tags": tags_batch(3)}
    )
    origin = np.array([0, 0, 1, 2, 2])
    tokens = np.concatenate([np.ones((5, 1), np.int64), rng.integers(4, 8, (5, 3))], axis=1)
    check_graph(
        client,
        sessions,
        "captioner_decoder",
        {
            "tokens": tokens,
            "memory": enc["memory"][origin],
            "memory_lengths": enc["memory_lengths"][origin],
            "tag_vector": enc["tag_vector"][origin],
        },
    )


@pytest.mark.slow
@pytest.mark.parametrize("params", [{}, {"beam_size": 5, "n_best": 4, "max_tokens": 3}])
def test_captioner_bls_equals_numpy_beam_search(client, sessions, vocab, tiny_bundle, params):
    wave, lengths = audio_batch([20000, 7000, 12345], seed=len(params))
    tags = tags_batch(3, seed=len(params))
    result = infer(client, CAPTIONER, {"waveform": wave, "lengths": lengths[:, None], "tags": tags}, parameters=params)
    options = DecodingOptions(**{"beam_size": read_bundle(tiny_bundle).captioner.beam_size, **params})
    captions, scores = reference_captions(sessions, vocab, wave, lengths, tags, options)
    got = [[c.decode() for c in row] for row in result.as_numpy("captions")]
    assert got == captions
    assert np.abs(result.as_numpy("scores") - scores).max() <= ATOL


@pytest.mark.slow
def test_captioner_rejects_bad_options(client):
    wave, lengths = audio_batch([8000])
    with pytest.raises(grpcclient.InferenceServerException, match="n_best"):
        infer(client, CAPTIONER, {"waveform": wave, "lengths": lengths[:, None]}, parameters={"n_best": 5})
    with pytest.raises(grpcclient.InferenceServerException, match="max_tokens must be <= 20"):
        infer(client, CAPTIONER, {"waveform": wave, "lengths": lengths[:, None]}, parameters={"max_tokens": 50})
    with pytest.raises(grpcclient.InferenceServerException, match="unknown parameters"):
        infer(client, CAPTIONER, {"waveform": wave, "lengths": lengths[:, None]}, parameters={"beams": 2})


def infer_together(client, model, feeds):
    """Issue every request before waiting for any, so that Triton can batch them; results in request order."""
    done, results = threading.Semaphore(0), [None] * len(feeds)

    def callback(i):
        def record(result, error):
            results[i] = error if error is not None else result
            done.release()

        return record

    for i, feed in enumerate(feeds):
        client.async_infer(model, tensors(feed), callback=callback(i))
    for _ in feeds:
        assert done.acquire(timeout=60), f"{model}: no answer within 60 s"
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def executions(client, model):
    return int(client.get_inference_statistics(model, as_json=True)["model_stats"][0].get("execution_count", 0))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["audio_encoder", CAPTIONER])
def test_concurrent_requests_are_batched_and_answered_correctly(client, sessions, vocab, model):
    """Requests that queue behind a busy instance run in one execute() (for the captioner: one beam search over
    clips of unequal lengths) and each still gets its own answer."""
    wave, lengths = audio_batch([80000] * 16, seed=99)  # ~0.2 s of work: the others arrive while it runs
    busy = {"waveform": wave, "lengths": lengths[:, None], **({"tags": tags_batch(16)} if model == CAPTIONER else {})}
    batched = False
    for attempt in range(3):  # batching depends on timing: retry rather than fail on one unlucky schedule
        if model == "audio_encoder":  # equal shapes: the only requests the dynamic batcher merges for a graph
            clips = [audio_batch([12000, 5000], seed=10 * attempt + s) for s in range(3)]
            feeds = [{"waveform": w, "lengths": n[:, None]} for w, n in clips]
        else:  # allow_ragged_batch on waveform: unequal lengths reach the captioner together
            clips = [audio_batch([15000, 6000], seed=attempt), audio_batch([9000], seed=attempt + 5)]
            feeds = [{"waveform": w, "lengths": n[:, None], "tags": tags_batch(len(n), attempt)} for w, n in clips]
        before = executions(client, model)
        results = infer_together(client, model, [busy, *feeds])[1:]
        batched |= executions(client, model) - before < 1 + len(feeds)
        for feed, result in zip(feeds, results):
            wave, lengths = feed["waveform"], feed["lengths"][:, 0]
            if model == "audio_encoder":
                ref = sessions[model].run(["audio_embedding"], {"waveform": wave, "lengths": lengths})[0]
                assert np.abs(result.as_numpy("audio_embedding") - ref).max() <= ATOL
            else:
                captions, scores = reference_captions(sessions, vocab, wave, lengths, feed["tags"], DecodingOptions())
                assert [[c.decode() for c in row] for row in result.as_numpy("captions")] == captions
                assert np.abs(result.as_numpy("scores") - scores).max() <= ATOL
        if batched:
            break
    assert batched, f"{model}: Triton never ran concurrent requests in one execution"


@pytest.mark.slow
def test_a_model_that_fails_to_load_is_an_error(server, tmp_path):
    """Only a binary that cannot run is a skip: a repository Triton rejects raises TritonStartError."""
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "config.pbtxt").write_text(
        'name: "broken" backend: "python" max_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    (tmp_path / "broken" / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('broken on purpose')\n"
    )
    with pytest.raises(TritonStartError, match="broken on purpose"):
        launch_cpu_server(tmp_path, timeout_s=60)


@pytest.mark.slow
def test_real_triton_parses_the_gpu_flavour(tiny_bundle, tmp_path, server):
    """The wheel's server has no onnxruntime backend, but it parses and validates every GPU-flavour config up to
    the backend lookup; a malformed config fails earlier, at the repository poll."""
    repo = write_repository(tiny_bundle, tmp_path / "gpu", tensorrt=True)
    with launch_cpu_server(repo, extra_args=["--model-control-mode=explicit"], timeout_s=60) as gpu_server:
        client = grpcclient.InferenceServerClient(gpu_server.grpc_url)
        for model in GRAPHS:
            with pytest.raises(grpcclient.InferenceServerException, match="backend 'onnxruntime'"):
                client.load_model(model)
        client.load_model(CAPTIONER)  # the Python-backend captioner loads as it is
        assert client.is_model_ready(CAPTIONER)
