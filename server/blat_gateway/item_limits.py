"""Limits on what an item stores (caption, tags, source_uri, extra), checked the same way for REST, gRPC and rebuilds,
and the largest gRPC search reply they allow.

Every stored string comes back in search answers: `max_k` hits of the longest items must fit the 4 MiB that a gRPC
client accepts by default, whatever was stored, or every search returning such an item fails for every default
client (a 5 MiB caption once did; its own AddItem reply failed after the write had committed). Checks run before
anything is embedded or stored.
"""

from __future__ import annotations

import json

from blat_gateway.errors import BadRequest
from blat_gateway.index.records import ID_PATTERN, ItemRecord

GRPC_DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024  # bytes: grpc's default max_receive_message_length on a client channel
UTF8_MAX = 4  # bytes per character at most
ID_CHARS = 200  # records.ID_PATTERN: 1-200 ASCII characters
CONTENT_HASH_CHARS = 128  # a sha256 is 64 hex digits; room for another digest, never a document
ISO_TIME_CHARS = 24  # "2026-12-03T06:45:45.123Z"
REPLY_SLACK = 1024  # the reply's own fields (bundle name, index version) and field headers outside the hits
assert ID_PATTERN.pattern.endswith("{1,200}")


def _field(payload: int) -> int:
    """A length-delimited protobuf field: a one-byte tag, the varint length, the payload."""
    return 1 + max(1, (payload.bit_length() + 6) // 7) + payload


def worst_item_bytes(limits) -> int:
    """The largest `Item` message (blat_wire/blat.proto) the limits allow."""
    return (
        _field(ID_CHARS)
        + _field(UTF8_MAX * limits.max_source_uri_chars)
        + 5  # duration_s: tag + float
        + limits.max_tags * _field(UTF8_MAX * limits.max_tag_chars)
        + _field(UTF8_MAX * limits.max_caption_chars)
        + _field(CONTENT_HASH_CHARS)
        + _field(ISO_TIME_CHARS)
        + _field(limits.max_extra_bytes)  # extra_json: compact UTF-8 JSON, as check_fields measures it
    )


def worst_search_reply_bytes(limits) -> int:
    """The largest `SearchResponse`: max_k hits (id, score, item) of the largest items."""
    hit = _field(ID_CHARS) + 5 + _field(worst_item_bytes(limits))
    return limits.max_k * _field(hit) + REPLY_SLACK


def _too_long(what: str, value: str, limit: int) -> BadRequest:
    return BadRequest(
        f"{what} is {len(value):,} characters long; at most {limit:,} are stored", field=what, limit=limit
    )


def check_fields(limits, tags=(), caption: str = "", source_uri: str = "", extra: dict | None = None) -> None:
    """BadRequest naming the first field over its limit (`limits`: settings.LimitSettings)."""
    if len(tags) > limits.max_tags:
        raise BadRequest(
            f"at most {limits.max_tags} tags are stored per item, got {len(tags)}", field="tags", limit=limits.max_tags
        )
    for i, tag in enumerate(tags):
        if isinstance(tag, str) and len(tag) > limits.max_tag_chars:
            raise _too_long(f"tags[{i}]", tag, limits.max_tag_chars)
    for what, value, limit in (
        ("caption", caption, limits.max_caption_chars),
        ("source_uri", source_uri, limits.max_source_uri_chars),
    ):
        if isinstance(value, str) and len(value) > limit:
            raise _too_long(what, value, limit)
    if extra:
        size = len(json.dumps(extra, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
        if size > limits.max_extra_bytes:
            raise BadRequest(
                f"extra takes {size:,} bytes as JSON; at most {limits.max_extra_bytes:,} are stored",
                field="extra",
                limit=limits.max_extra_bytes,
            )


def check_record(record: ItemRecord, limits) -> ItemRecord:
    """The record, if every stored string is within the limits (content_hash too: it comes from files a rebuild
    reads); BadRequest naming the item and the field otherwise."""
    try:
        check_fields(limits, record.tags, record.caption, record.source_uri, record.extra)
        if len(record.content_hash) > CONTENT_HASH_CHARS:
            raise _too_long("content_hash", record.content_hash, CONTENT_HASH_CHARS)
    except BadRequest as e:
        raise BadRequest(f"item {record.id!r}: {e.message}", id=record.id, **e.details) from None
    return record
