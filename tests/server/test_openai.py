"""The OpenAI-compatible embeddings route, driven by the official `openai` Python client: texts and (with infinity's
`modality: audio`) base64 clips give the same vectors as /v1/embed/*, in both encodings the client may ask for;
mistakes come back as the client's typed errors; the model list names the served bundle."""

from __future__ import annotations

import base64
import json

import numpy as np
import openai
import pytest

from blat_client import Client
from tests.server.conftest import running_inproc, synth_clip, wav

KEYS = {"reader": ["read"]}


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    env = {"BLAT_SERVER_AUTH__KEYS": json.dumps(KEYS), "BLAT_SERVER_LIMITS__MAX_CLIPS_PER_REQUEST": "3"}
    with running_inproc(tiny_bundle, tmp_path_factory.mktemp("openai"), env=env) as server:
        yield server


@pytest.fixture(scope="module")
def oai(gw):
    with openai.OpenAI(base_url=f"{gw.http_url}/v1", api_key="reader", max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def ours(gw):
    with Client(gw.http_url, api_key="reader") as c:
        yield c


@pytest.fixture(scope="module")
def model(gw):
    return gw.gateway.manifest.id


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_models_lists_the_served_bundle(oai, model):
    assert [m.id for m in oai.models.list()] == [model]


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_text_embeddings_equal_embed_text(oai, ours, model, encoding):
    texts = ["a dog barking", "rain on a window", "a door closes"]
    got = oai.embeddings.create(model=model, input=texts, encoding_format=encoding)
    assert got.object == "list" and got.model == model and [d.index for d in got.data] == [0, 1, 2]
    vecs = got.data[0].embedding
    if encoding == "base64":  # the client hands back the string it was asked for
        decoded = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in got.data]
    else:
        decoded = [np.asarray(d.embedding, dtype=np.float32) for d in got.data]
    assert vecs is not None
    np.testing.assert_allclose(np.stack(decoded), np.asarray(ours.embed_text(texts)), atol=1e-6)
    one = oai.embeddings.create(model=model.split("@")[0], input="a dog barking")  # the bundle's name works too
    np.testing.assert_allclose(one.data[0].embedding, decoded[0], atol=1e-6)


def test_audio_embeddings_equal_embed_audio_and_share_the_text_space(oai, ours, model):
    clips = [wav(synth_clip(s, 1.0)) for s in (1, 2)]
    got = oai.embeddings.create(
        model=model,
        input=[b64(clips[0]), "data:audio/wav;base64," + b64(clips[1])],
        extra_body={"modality": "audio"},
    )
    vecs = np.asarray([d.embedding for d in got.data], dtype=np.float32)
    np.testing.assert_allclose(vecs, np.asarray([ours.embed_audio(c) for c in clips]), atol=1e-5)
    text = np.asarray(oai.embeddings.create(model=model, input="a beep").data[0].embedding)
    assert vecs.shape[1] == text.shape[0]  # one space: cosine between a clip and a text is meaningful


def test_mistakes_are_typed_errors(gw, oai, model):
    clip = b64(wav(synth_clip(3, 0.5)))
    with pytest.raises(openai.NotFoundError) as e:
        oai.embeddings.create(model="gpt-5", input="x")
    assert model in str(e.value)
    bad = [
        ({"input": ["https://example.com/a.wav"], "extra_body": {"modality": "audio"}}, "does not fetch"),
        ({"input": ["!!!"], "extra_body": {"modality": "audio"}}, "not base64"),
        ({"input": [clip] * 4, "extra_body": {"modality": "audio"}}, "at most 3 clips"),
        ({"input": [b64(b"not audio at all")], "extra_body": {"modality": "audio"}}, "input[0]"),
        ({"input": "x", "dimensions": 7}, "cannot shorten"),
        ({"input": [[1, 2, 3]]}, "input"),  # token arrays are not taken
        ({"input": "x", "extra_body": {"modality": "video"}}, "modality"),
    ]
    for kwargs, words in bad:
        with pytest.raises(openai.APIStatusError) as e:
            oai.embeddings.create(model=model, **kwargs)
        assert e.value.status_code in (400, 415, 422) and words in str(e.value), (kwargs, str(e.value))
    with openai.OpenAI(base_url=f"{gw.http_url}/v1", api_key="wrong", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            stranger.embeddings.create(model=model, input="x")


def test_good_and_bad_requests_together_each_get_their_own_answer(oai, ours, model):
    from concurrent.futures import ThreadPoolExecutor

    clip = wav(synth_clip(4, 1.0))
    want_audio, want_text = np.asarray(ours.embed_audio(clip)), np.asarray(ours.embed_text("rain")[0])

    def call(i: int):
        try:
            if i % 3 == 0:
                return "audio", oai.embeddings.create(
                    model=model, input=[b64(clip)], extra_body={"modality": "audio"}
                ).data[0].embedding
            if i % 3 == 1:
                return "text", oai.embeddings.create(model=model, input="rain").data[0].embedding
            oai.embeddings.create(model=model, input=["%%%"], extra_body={"modality": "audio"})
            return "bad", None
        except openai.APIStatusError as e:
            return "refused", e.status_code

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, range(24)))
    for i, (kind, value) in enumerate(results):
        if i % 3 == 2:
            assert (kind, value) == ("refused", 400)
        else:
            np.testing.assert_allclose(value, want_audio if kind == "audio" else want_text, atol=1e-5)
