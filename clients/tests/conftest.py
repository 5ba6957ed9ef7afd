"""The client's own tests run against a real gateway named by the environment:

    BLAT_TEST_URL=http://127.0.0.1:8080 BLAT_TEST_GRPC=127.0.0.1:50051 python -m pytest clients/tests

The gateway must accept writes without a key and have an empty ingest root at $BLAT_TEST_ROOT (a folder both this
process and the server can read). Everything here uses the standard library and blat_client only, so it runs in a
virtualenv that holds nothing but the client (tests/clients/test_install.py does exactly that).
"""

from __future__ import annotations

import array
import io
import math
import os
import random
import wave

import pytest

from blat_client import Client

RATE = 16000


def wav_bytes(seed: int, seconds: float = 1.0, rate: int = RATE, channels: int = 1) -> bytes:
    """A distinct 16-bit clip: two tones and some noise, all from the seed."""
    rnd = random.Random(seed)
    f1, f2 = rnd.uniform(150, 900), rnd.uniform(1000, 3000)
    n = int(seconds * rate)
    samples = array.array("h")
    for i in range(n):
        t = i / rate
        x = 0.3 * math.sin(2 * math.pi * f1 * t) + 0.2 * math.sin(2 * math.pi * f2 * t) * (t % 0.5 < 0.25)
        x += 0.05 * rnd.uniform(-1, 1)
        samples.extend([int(32767 * max(-1.0, min(1.0, x)))] * channels)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"set {name}: these tests need a running gateway (see clients/tests/conftest.py)")
    return value


@pytest.fixture(scope="session")
def rest_url() -> str:
    return _env("BLAT_TEST_URL")


@pytest.fixture(scope="session")
def grpc_target() -> str:
    return "grpc://" + _env("BLAT_TEST_GRPC")


@pytest.fixture(scope="session")
def ingest_root() -> str:
    return _env("BLAT_TEST_ROOT")


@pytest.fixture(scope="session", params=["rest", "grpc"])
def client(request, rest_url, grpc_target):
    with Client(rest_url if request.param == "rest" else grpc_target, timeout=60) as c:
        yield c
