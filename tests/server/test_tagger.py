"""A bundle with a supervised tagger (YAMNet's AudioSet head), served by a real gateway over REST and gRPC: the
default labels are scored by the tagger and say so, other labels stay zero-shot, audio added without tags gets
predicted tags (marked, with scores), and a caption without tags is guided by the clip's predicted tags."""

from __future__ import annotations

import httpx
import pytest

from blat_client import Client
from blat_contract.bundle import read_bundle
from tests.server.conftest import running_inproc, wav


@pytest.fixture(scope="module")
def gateway(yamnet_bundle, tmp_path_factory):
    with running_inproc(yamnet_bundle, tmp_path_factory.mktemp("tagger")) as server:  # API only: in-process
        yield server


@pytest.fixture(scope="module")
def phone(real_clips) -> bytes:
    """A real recording of a telephone's busy tone (Debian's sound-theme-freedesktop), as WAV at 32 kHz."""
    return wav(real_clips["phone-outgoing-busy"])


def test_bundle_declares_the_tagger(yamnet_bundle):
    m = read_bundle(yamnet_bundle)
    assert m.tagger is not None and len(m.tagger.labels) == 521 and "audio_tagger" in m.graphs
    assert "YAMNet" in m.tagger.source and "Apache-2.0" in m.tagger.source


def test_default_labels_come_from_the_tagger(gateway, phone):
    r = httpx.post(f"{gateway.http_url}/v1/tag", params={"top_k": 5}, content=phone, timeout=60)
    assert r.status_code == 200, r.text
    tags = r.json()["tags"]
    assert {t["scorer"] for t in tags} == {"tagger"}
    assert tags[0]["label"] in {"Telephone", "Busy signal", "Dial tone", "Telephone bell ringing"}, tags
    info = httpx.get(f"{gateway.http_url}/v1/info", timeout=10).json()
    assert len(info["bundle"]["tagger"]["labels"]) == 521


def test_custom_and_missing_labels_stay_zero_shot(gateway, phone):
    labels = ["busy signal", "Male speech, man speaking", "a squeaky hinge"]
    r = httpx.post(f"{gateway.http_url}/v1/tag", params={"top_k": 3, "labels": labels}, content=phone, timeout=60)
    assert r.status_code == 200, r.text
    by_label = {t["label"]: t for t in r.json()["tags"]}
    assert by_label["busy signal"]["scorer"] == "tagger" and by_label["busy signal"]["score"] > 0.3
    assert by_label["Male speech, man speaking"]["scorer"] == "zero_shot"
    assert by_label["a squeaky hinge"]["scorer"] == "zero_shot"
    with Client(f"grpc://{gateway.grpc_address}") as c:  # the same scorers over gRPC
        grpc_tags = {t.label: t.scorer for t in c.tag(phone, labels=labels, top_k=3).tags}
    assert grpc_tags == {k: v["scorer"] for k, v in by_label.items()}


def test_items_without_tags_get_predicted_tags(gateway, phone, real_clips):
    r = httpx.post(f"{gateway.http_url}/v1/items", params={"id": "raw/phone"}, content=phone, timeout=60)
    assert r.status_code == 201, r.text
    item = r.json()
    predicted = item["extra"]["predicted_tags"]
    assert item["tags"] == list(predicted) and 1 <= len(predicted) <= 5
    assert all(0.2 <= s <= 1 for s in predicted.values())
    assert list(predicted.values()) == sorted(predicted.values(), reverse=True)
    # a filter on a predicted tag finds it; given tags are kept as given and never marked predicted
    hits = httpx.post(
        f"{gateway.http_url}/v1/search/text",
        timeout=30,
        json={"query": "a sound", "k": 5, "filter": {"tags_any": [item["tags"][0]]}},
    ).json()["hits"]
    assert "raw/phone" in [h["id"] for h in hits]
    bell = wav(real_clips["bell"])
    r = httpx.post(
        f"{gateway.http_url}/v1/items", params={"id": "given/bell", "tags": "Rain"}, content=bell, timeout=60
    )
    assert r.status_code == 201, r.text
    assert r.json()["tags"] == ["Rain"] and "predicted_tags" not in r.json()["extra"]


def test_caption_without_tags_is_guided_by_predicted_tags(gateway, phone):
    r = httpx.post(f"{gateway.http_url}/v1/caption", content=phone, timeout=60)
    assert r.status_code == 200, r.text
    cap = r.json()["captions"][0]
    assert cap["tags_predicted"] is True and 1 <= len(cap["guide_tags"]) <= 3
    tagged = httpx.post(f"{gateway.http_url}/v1/tag", params={"top_k": 3}, content=phone, timeout=60).json()["tags"]
    assert cap["guide_tags"] == [t["label"] for t in tagged if t["score"] >= 0.2][:3]
    given = httpx.post(f"{gateway.http_url}/v1/caption", params={"tags": "Rain"}, content=phone, timeout=60).json()
    assert given["captions"][0]["guide_tags"] == ["Rain"] and given["captions"][0]["tags_predicted"] is False


@pytest.fixture(scope="module")
def mixing_gateway(yamnet_bundle, tmp_path_factory):
    """The same bundle, its bundle.json saying that the tagger's labels mix in the zero-shot score at 0.5."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("mixing") / "bundle"
    shutil.copytree(yamnet_bundle, folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["tagger"]["zero_shot_weight"] = 0.5
    (folder / "bundle.json").write_text(json.dumps(manifest))
    with running_inproc(folder, tmp_path_factory.mktemp("mixing-index")) as server:
        yield server


def test_a_mixing_bundle_says_so_and_scores_the_mean(gateway, mixing_gateway, phone):
    labels = ["Busy signal", "Telephone", "a squeaky hinge"]

    def scores(server):
        r = httpx.post(f"{server.http_url}/v1/tag", params={"top_k": 3, "labels": labels}, content=phone, timeout=60)
        assert r.status_code == 200, r.text
        return {t["label"]: t for t in r.json()["tags"]}

    head, mixed = scores(gateway), scores(mixing_gateway)
    assert {k: v["scorer"] for k, v in mixed.items()} == {
        "Busy signal": "tagger+zero_shot",
        "Telephone": "tagger+zero_shot",
        "a squeaky hinge": "zero_shot",
    }
    # zero-shot alone: the same free-text label on both gateways
    assert mixed["a squeaky hinge"]["score"] == pytest.approx(head["a squeaky hinge"]["score"], rel=1e-4)
    for label in ("Busy signal", "Telephone"):  # mixed = (head + zero-shot) / 2, so the zero-shot part is a probability
        zero_shot = 2 * mixed[label]["score"] - head[label]["score"]
        assert -1e-4 <= zero_shot <= 1 + 1e-4
        assert mixed[label]["score"] != pytest.approx(head[label]["score"], abs=1e-3)  # the random projection's part
    info = httpx.get(f"{mixing_gateway.http_url}/v1/info", timeout=10).json()
    assert info["bundle"]["tagger"]["zero_shot_weight"] == 0.5
