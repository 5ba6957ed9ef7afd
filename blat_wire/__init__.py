"""The gRPC wire protocol: `blat.proto` and the Python modules generated from it (`python -m blat_wire.generate`).

Both the server and the clients import this package; it imports neither.
"""
