"""The build refuses stale gRPC stubs: blat_client/_wire/ must have been generated from the blat.proto shipped beside
it (`python -m blat_wire.generate` in the repository writes both and records the proto's sha256)."""

import hashlib
import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WIRE = Path(__file__).resolve().parent / "blat_client" / "_wire"


class CheckedBuildPy(build_py):
    def run(self):
        recorded = re.search(r'PROTO_SHA256 = "([0-9a-f]{64})"', (WIRE / "__init__.py").read_text())
        actual = hashlib.sha256((WIRE / "blat.proto").read_bytes()).hexdigest()
        if not recorded or recorded.group(1) != actual:
            raise SystemExit(
                "blat_client/_wire is stale: its stubs were not generated from the blat.proto beside "
                "them. Run `python -m blat_wire.generate` in the repository."
            )
        super().run()


setup(cmdclass={"build_py": CheckedBuildPy})
