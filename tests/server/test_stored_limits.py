"""Limits on every stored string (caption, tags, source_uri, extra), on both faces and in rebuild manifests; and the
largest gRPC search reply they allow, under the 4 MiB a default gRPC client accepts."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest

from blat_gateway.item_limits import GRPC_DEFAULT_MAX_RECEIVE, worst_search_reply_bytes
from blat_gateway.settings import LimitSettings
from blat_wire import blat_pb2 as pb
from blat_wire import blat_pb2_grpc as pb_grpc
from tests.server.conftest import running_inproc, synth_clip, wav

LIM = LimitSettings()
WIDE = "\U0001f50a"  # 🔊: four bytes in UTF-8, the widest a character gets


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    with running_inproc(tiny_bundle, tmp_path_factory.mktemp("stored-limits")) as server:  # API only: in-process
        yield server


@pytest.fixture(scope="module")
def stub(gw):
    with grpc.insecure_channel(gw.grpc_address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        yield pb_grpc.BlatStub(channel)


def grpc_add(stub, item_id: str, seed: int, **fields) -> pb.Item:
    return stub.AddItem(
        pb.AddItemRequest(id=item_id, audio=pb.Audio(data=wav(synth_clip(seed, 0.5))), **fields), timeout=60
    )


def test_a_5_mib_caption_is_refused_before_it_is_stored(gw, stub):
    """The outside probe's case: the write was committed, then its own reply broke the client."""
    with pytest.raises(grpc.RpcError) as got:
        grpc_add(stub, "big/caption", 1, caption="x" * (5 << 20))
    assert got.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "caption" in got.value.details() and f"{LIM.max_caption_chars:,}" in got.value.details()
    assert httpx.get(f"{gw.http_url}/v1/items/big/caption").status_code == 404


@pytest.mark.parametrize(
    "field, value",
    [
        ("caption", "c" * (LIM.max_caption_chars + 1)),
        ("source_uri", "s" * (LIM.max_source_uri_chars + 1)),
        ("tags", ["t" * (LIM.max_tag_chars + 1)]),
        ("tags", [f"t{i}" for i in range(LIM.max_tags + 1)]),
    ],
)
def test_each_stored_string_has_a_limit_on_both_faces(gw, stub, field, value):
    with pytest.raises(grpc.RpcError) as got:
        grpc_add(stub, "over/limit", 2, **{field: value})
    assert got.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field.rstrip("s") in got.value.details()
    r = httpx.post(f"{gw.http_url}/v1/items/from-path", json={"id": "over/limit", "path": "nowhere.wav", field: value})
    assert r.status_code == 400 and field in r.text, r.text
    assert httpx.get(f"{gw.http_url}/v1/items/over/limit").status_code == 404


def test_the_schema_declares_the_limits(gw):
    spec = httpx.get(f"{gw.http_url}/openapi.json").json()
    body = spec["components"]["schemas"]["AddFromPathBody"]["properties"]
    assert body["caption"]["maxLength"] == LIM.max_caption_chars
    assert body["source_uri"]["maxLength"] == LIM.max_source_uri_chars
    assert body["tags"]["maxItems"] == LIM.max_tags and body["tags"]["items"]["maxLength"] == LIM.max_tag_chars
    params = {p["name"]: p for p in spec["paths"]["/v1/items"]["post"]["parameters"]}
    assert params["caption"]["schema"]["maxLength"] == LIM.max_caption_chars


def test_a_rebuild_manifest_row_over_a_limit_is_refused_naming_the_row(gw):
    (gw.roots / "ok.wav").write_bytes(wav(synth_clip(3, 0.5)))
    rows = [
        {"id": "ok", "audio": "ok.wav"},
        {"id": "long", "audio": "ok.wav", "caption": "c" * (LIM.max_caption_chars + 1)},
    ]
    (gw.roots / "limits.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    r = httpx.post(
        f"{gw.http_url}/v1/index/rebuild", json={"manifest": str(gw.roots / "limits.jsonl"), "mode": "replace"}
    )
    assert r.status_code == 400 and "limits.jsonl:2" in r.text and "caption" in r.text, r.text


def test_settings_refuse_limits_whose_search_reply_could_pass_4_mib():
    assert worst_search_reply_bytes(LIM) < GRPC_DEFAULT_MAX_RECEIVE
    with pytest.raises(ValueError, match="4 MiB"):
        LimitSettings(max_k=1000)


def test_max_k_hits_at_maximum_lengths_reach_a_default_grpc_client(gw, stub):
    """Every stored string at its limit, in four-byte characters, k = max_k: the worst case the settings allow."""
    tags = [f"{i:02d}" + WIDE * (LIM.max_tag_chars - 2) for i in range(LIM.max_tags)]
    wrapper = len('{"note":""}')  # extra as compact UTF-8 JSON, filled to max_extra_bytes with 4-byte characters
    extra = json.dumps({"note": WIDE * ((LIM.max_extra_bytes - wrapper) // 4)}, ensure_ascii=False)
    assert len(extra.replace(" ", "").encode()) > LIM.max_extra_bytes - 4
    for i in range(LIM.max_k):
        grpc_add(
            stub,
            f"max/{i:03d}",
            100 + i,
            tags=tags,
            caption=f"{i:04d}" + WIDE * (LIM.max_caption_chars - 4),
            source_uri=f"{i:04d}" + WIDE * (LIM.max_source_uri_chars - 4),
            extra_json=extra,
        )
    with grpc.insecure_channel(gw.grpc_address) as channel:  # a default client: 4 MiB receive limit
        reply = pb_grpc.BlatStub(channel).SearchItem(pb.SearchItemRequest(id="max/000", k=LIM.max_k), timeout=60)
    assert len(reply.hits) == LIM.max_k - 1  # all the others (the item itself is not its own neighbour)
    full = reply.ByteSize() * LIM.max_k / len(reply.hits)
    assert full <= worst_search_reply_bytes(LIM) < GRPC_DEFAULT_MAX_RECEIVE
    print(
        f"\nmax_k={LIM.max_k} hits at maximum lengths: {full / 2**20:.2f} MiB; bound "
        f"{worst_search_reply_bytes(LIM) / 2**20:.2f} MiB"
    )
