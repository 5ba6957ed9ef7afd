"""The gateway's operations by concern, shared by the REST and gRPC faces so the two APIs cannot drift.

Each service takes plain values (bytes, strings, numbers), validates them against the settings' limits, and returns
plain dataclasses or raises a `blat_gateway.errors.ServiceError`. `blat_gateway.service.Gateway` builds them over
one `Context` (settings, runtime, index, uploads, batchers) and exposes them as `gw.embedding`, `gw.search`,
`gw.tagging`, `gw.captioning`, `gw.items` and `gw.ingest`.
"""
