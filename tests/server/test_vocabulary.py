"""One vocabulary: REST's JSON uses blat.proto's field names, and both faces speak one error-code set.

The REST models (schema.py) are compared with the proto messages field by field, recursively, under the two rules
blat.proto states: a proto string `X_json` is the JSON value `X` over REST, and an `Embedding {values}` is a plain
array. Answers must name exactly the proto's fields; request bodies may take fewer (a oneof, say) but no others.
"""

from __future__ import annotations

import types
import typing

import pytest
from pydantic import BaseModel

from blat_gateway import schema
from blat_gateway.api import ENDPOINTS
from blat_gateway.errors import BadAudio, NotFound, Overloaded, ReadOnly, ServiceError, grpc_answer, http_answer
from blat_gateway.settings import Settings
from blat_wire import blat_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Blat"]


def rest_names(model: type[BaseModel]) -> dict[str, object]:
    return {(f.alias or name): f.annotation for name, f in model.model_fields.items()}


def proto_names(message) -> dict[str, object]:
    """REST's name for each field of a message descriptor, with the field."""
    return {(f.name.removesuffix("_json") if f.name.endswith("_json") else f.name): f for f in message.fields}


def submodel(annotation) -> type[BaseModel] | None:
    """The pydantic model inside `M`, `M | None`, `list[M]`, `dict[str, M | ...]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, (types.UnionType, typing._GenericAlias, types.GenericAlias)) or typing.get_origin(
        annotation
    ):
        for arg in typing.get_args(annotation):
            if (found := submodel(arg)) is not None:
                return found
    return None


def mismatches(model: type[BaseModel], message, exact: bool, where: str) -> list[str]:
    rest, proto = rest_names(model), proto_names(message)
    out = [
        f"{where}.{name}: REST only (blat.{message.name} has no such field)" for name in sorted(set(rest) - set(proto))
    ]
    if exact:
        out += [
            f"{where}.{name}: missing over REST (blat.{message.name}.{name})" for name in sorted(set(proto) - set(rest))
        ]
    for name in sorted(set(rest) & set(proto)):
        field = proto[name]
        inner = field.message_type
        if inner is None or inner.full_name.startswith("google.protobuf") or inner.name == "Embedding":
            continue
        if inner.GetOptions().map_entry:
            inner = inner.fields_by_name["value"].message_type
            if inner is None:
                continue
        sub = submodel(rest[name])
        if sub is None:
            out.append(f"{where}.{name}: blat.{inner.name} over gRPC, not an object over REST")
        else:
            out += mismatches(sub, inner, exact, f"{where}.{name}")
    return out


def test_every_answer_names_exactly_the_proto_fields():
    checked, problems = 0, []
    for ep in ENDPOINTS:
        if ep.route and ep.rpc and ep.ok is not None:
            output = SERVICE.methods_by_name[ep.rpc].output_type
            problems += mismatches(ep.ok, output, exact=True, where=f"{ep.route} ({ep.rpc})")
            checked += 1
    assert checked >= 15, f"only {checked} endpoints have both faces and a declared answer"
    assert not problems, "\n".join(problems)


def test_request_bodies_use_proto_field_names():
    m = schema.request_models(Settings().limits)
    pairs = {
        m.SearchTextBody: "SearchTextRequest",
        m.SearchTextsBody: "SearchTextsRequest",
        m.SearchItemBody: "SearchItemRequest",
        m.EmbedTextBody: "EmbedTextRequest",
        m.RebuildBody: "RebuildRequest",
        m.TagClipsBody: "TagClipsRequest",
        m.AddItemsBody: "AddItemsRequest",
        m.AddFromPathBody: "AddItemRequest",
    }
    problems = []
    for model, name in pairs.items():
        problems += mismatches(model, pb.DESCRIPTOR.message_types_by_name[name], exact=False, where=name)
    assert not problems, "\n".join(problems)


def test_the_rules_catch_a_renamed_field():
    """The comparison itself can fail: a REST answer with REST's old stats names does not pass."""

    class OldStats(BaseModel):
        count: int
        kind: str

    found = mismatches(OldStats, pb.StatsResponse.DESCRIPTOR, exact=True, where="stats")
    assert any("count: REST only" in p for p in found) and any("items: missing" in p for p in found)


@pytest.mark.parametrize(
    "error", [NotFound("no item 'x'"), BadAudio("not audio", index=2), ReadOnly("a replica"), Overloaded("busy", 3.0)]
)
def test_one_error_vocabulary_on_both_faces(error: ServiceError):
    import json

    status, headers, body = http_answer(error)
    rest = json.loads(body)["error"]
    code, message, trailing = grpc_answer(error)
    meta = dict(trailing)
    assert rest["code"] == code and code in {c.name for c in __import__("grpc").StatusCode}
    assert rest["http_status"] == status == int(meta["blat-http-status"])
    assert rest["reason"] == meta["blat-error-reason"] == error.code and rest["message"] == message
    assert rest.get("details", {}) == json.loads(meta.get("blat-error-details", "{}"))
