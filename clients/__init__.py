"""Clients that speak only the wire protocol (HTTP/JSON and gRPC)."""
