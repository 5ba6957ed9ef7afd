"""Clients that speak only the wire protocol (HTTP/JSON and gRPC): `RestClient`, `GrpcClient`, and the CLI
`python -m clients`. This package imports `wire`, httpx and grpcio, never the server or the model code."""
from clients.blat_client import ClientError, GrpcClient, RestClient, connect

__all__ = ["ClientError", "GrpcClient", "RestClient", "connect"]
