"""Crash safety on each engine: every acknowledged write survives kill -9 at random points. FAISS only: a torn
SQLite journal tail is dropped (Milvus keeps its own write-ahead log)."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from blat_gateway.errors import NotFound
from tests.server.index.conftest import OPENERS, faiss_open, stored_ids
from tests.server.index.helpers import crash_item, crash_vector

ROOT = Path(__file__).resolve().parents[3]
DIM = 16

# The writer: prints "T <op>" before each operation and "A" once it returned (= acknowledged to a client).
WRITER = """
import os, signal, sys
from pathlib import Path
from tests.server.index.conftest import OPENERS
from tests.server.index.helpers import crash_item, crash_vector

root, prefix, n_ops, dim, engine = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
store = OPENERS[engine](Path(root), dim, "bundle", "flat")
print("ready", flush=True)
mine, version = [], {}
for i in range(n_ops):
    if i % 7 == 6 and mine:
        victim = mine.pop(len(mine) // 2)
        print("T del", victim, flush=True)
        store.delete(victim)
    elif i % 5 == 4 and mine:
        target = mine[-1]
        version[target] += 1
        print("T ups", target, version[target], flush=True)
        store.add(crash_item(target, version[target]), crash_vector(target, version[target], dim), upsert=True)
    elif i % 97 == 96:
        print("T snap", flush=True)
        store.snapshot()
    elif i % 211 == 210:
        print("T compact", flush=True)
        store.compact()
    else:
        new = f"{prefix}-{i}"
        print("T add", new, 0, flush=True)
        store.add(crash_item(new, 0), crash_vector(new, 0, dim))
        mine.append(new)
        version[new] = 0
    print("A", flush=True)
if n_ops >= 0:
    os.kill(os.getpid(), signal.SIGKILL)  # the end of a short run is a crash too: no close(), no checkpoint
"""


def start_writer(tmp_path: Path, root: Path, prefix: str, n_ops: int, engine: str = "faiss") -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(script), str(root), prefix, str(n_ops), str(DIM), engine],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "writer.err", "ab"),
        text=True,
    )


def apply_log(lines: list[str], model: dict[str, int]) -> tuple[str, ...] | None:
    """Apply acknowledged operations to `model` (id -> version); return the unacknowledged one in flight, if any."""
    pending = None
    for line in lines:
        if line.startswith("T "):
            pending = tuple(line.split()[1:])
        elif line == "A":
            op = pending
            if op[0] == "add":
                model[op[1]] = 0
            elif op[0] == "ups":
                model[op[1]] = int(op[2])
            elif op[0] == "del":
                model.pop(op[1])
            pending = None
    return pending


def check_store(root: Path, model: dict[str, int], in_flight: tuple[str, ...] | None, engine: str = "faiss") -> None:
    """Every acknowledged item is fully present; the one write in flight is either whole or absent; nothing else."""
    with OPENERS[engine](root, DIM, "bundle") as store:
        stored = stored_ids(store)
        expected = set(model)
        if in_flight and in_flight[0] == "add" and in_flight[1] in stored:
            model[in_flight[1]] = 0  # committed just before the kill: fine, and now part of the truth
        if in_flight and in_flight[0] == "del" and in_flight[1] not in stored:
            model.pop(in_flight[1])
        if in_flight and in_flight[0] == "ups":
            v = store.get(in_flight[1]).extra["version"]
            assert v in (int(in_flight[2]), int(in_flight[2]) - 1)
            model[in_flight[1]] = v
        assert stored == set(model), f"lost {expected - stored}, unexpected {stored - set(model)}"
        s = store.stats()
        assert s.count == len(model) == s.index_total - s.tombstones
        if engine == "faiss":
            n_vectors = store.index.live.db.conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
            assert n_vectors == len(model)  # no metadata without its embedding, nor the reverse
        if not model:
            return
        ids = sorted(model)
        vecs = np.stack([crash_vector(i, model[i], DIM) for i in ids])
        stored_pairs = {it.id: (it, vec) for it, vec in store.live_pairs()}  # in batches: a Milvus call is a round trip
        for i in ids:
            got = stored_pairs[i][0]
            assert got == dataclasses.replace(crash_item(i, model[i]), added_at=got.added_at)
        np.testing.assert_allclose(np.stack([stored_pairs[i][1] for i in ids]), vecs, atol=1e-6)
        for i in ids[:: max(1, len(ids) // 5)]:  # and one at a time, as the API reads them
            assert store.get(i) == stored_pairs[i][0]
            np.testing.assert_allclose(store.embedding(i), stored_pairs[i][1], atol=1e-6)
        top = store.search(vecs, 1)  # searchable: each stored vector finds its own item first
        assert [h[0].id for h in top] == ids


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_torn_journal_tail_is_dropped(tmp_path, damage):
    root = tmp_path / "store"
    proc = start_writer(tmp_path, root, "w", 12)  # adds, then kills itself: the WAL is never checkpointed
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "writer.err").read_text()
    model: dict[str, int] = {}
    assert apply_log(out.splitlines(), model) is None
    wal = root / "versions" / "v0001" / "items.sqlite-wal"
    size = wal.stat().st_size
    assert size > 4096
    with open(wal, "r+b") as f:  # damage the last frame: the commit record of the last acknowledged write
        if damage == "truncate":
            f.truncate(size - 100)
        else:
            f.seek(size - 100)
            f.write(bytes(100))
    # The last write ("add w-11", after "ups w-10 1" / "del ...") is lost as a whole; all earlier ones survive.
    last = [line for line in out.splitlines() if line.startswith("T ")][-1].split()[1:]
    assert last[:2] == ["add", "w-11"]
    model.pop("w-11")
    check_store(root, model, None)
    with faiss_open(root, DIM, "bundle") as store, pytest.raises(NotFound):
        store.get("w-11")


def test_kill_9_at_random_points_loses_no_acknowledged_write(tmp_path, engine):
    rng = random.Random(1234)
    root = tmp_path / "store"
    model: dict[str, int] = {}
    kills = 0
    for rnd in range(12):
        proc = start_writer(tmp_path, root, f"r{rnd}", 1_000_000, engine)
        if rnd % 4 == 3:
            time.sleep(rng.uniform(0.0, 0.8))  # anywhere, start-up and open (replay, snapshot) included
        else:
            assert proc.stdout.readline().strip() == "ready", (tmp_path / "writer.err").read_text()
            time.sleep(rng.uniform(0.01, 0.4))
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()  # not communicate(): it would skip what readline() already buffered
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, (tmp_path / "writer.err").read_text()
        kills += 1
        # Only whole lines count: a line cut by the kill was never fully reported, so never acknowledged.
        complete = rest.split("\n")[:-1]
        in_flight = apply_log([x for x in complete if x != "ready"], model)
        check_store(root, model, in_flight, engine)
    assert kills >= 10 and len(model) > (100 if engine == "faiss" else 30)
