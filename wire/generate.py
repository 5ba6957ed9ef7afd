"""Regenerate blat_pb2.py / blat_pb2_grpc.py from blat.proto (needs grpcio-tools): python -m wire.generate"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    from grpc_tools import protoc

    rc = protoc.main(["protoc", f"-I{HERE.parent}", f"--python_out={HERE.parent}", f"--grpc_python_out={HERE.parent}",
                      f"--pyi_out={HERE.parent}", str(HERE / "blat.proto")])
    return rc


if __name__ == "__main__":
    sys.exit(main())
