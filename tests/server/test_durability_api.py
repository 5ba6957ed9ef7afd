"""Crash safety through the API: the gateway is killed with SIGKILL at random moments while clients add items, and
restarted on the same index directory. Every acknowledged add (201 / OK) must survive; an add that got no answer is
either fully there (readable, searchable by id and by its own audio) or not there at all; search keeps working.
Clients never retry here (`retry=NO_RETRY`): each add is one attempt, acknowledged, refused or cut off by the kill.

A real process: SIGKILL is the point.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time

import pytest

from blat_client import NO_RETRY, Client, ClientError
from tests.server.conftest import start_server, synth_clip, wav

CYCLES = 10
MAX_ADDS = 100  # per writer and cycle: one writer's items of one cycle fit in one filtered search (k <= 100)
WRITERS = [("rest", 0), ("rest", 1), ("grpc", 2)]


class Ledger:
    """What the clients sent and what the server acknowledged, across all cycles."""

    def __init__(self):
        self.lock = threading.Lock()
        self.data: dict[str, bytes] = {}  # id -> the WAV sent
        self.hashes: dict[str, str] = {}  # id -> sha256 of its samples (what the server stores as content_hash)
        self.acked: set[str] = set()
        self.rejected: dict[str, str] = {}  # answered with an error before the kill: must be absent
        self.errors: list[tuple[float, str, str]] = []  # (time.monotonic(), id, error) of failed adds
        self.group: dict[str, tuple[int, int]] = {}  # id -> (cycle, writer): its tags

    def clip(self, item_id: str, seed: int, cycle: int, number: int) -> bytes:
        samples = synth_clip(seed, 0.5)
        data = wav(samples)
        with self.lock:
            self.data[item_id], self.group[item_id] = data, (cycle, number)
            self.hashes[item_id] = hashlib.sha256(samples.tobytes()).hexdigest()
        return data


def writer(url: str, face: str, number: int, cycle: int, ledger: Ledger, stop: threading.Event) -> None:
    client = Client(url if face == "rest" else f"grpc://{url}", timeout=20, retry=NO_RETRY)
    n = 0
    try:
        while not stop.is_set() and n < MAX_ADDS:
            item_id = f"c{cycle:02d}-w{number}-{n:04d}"
            data = ledger.clip(item_id, seed=100_000 * (cycle + 1) + 1000 * number + n, cycle=cycle, number=number)
            n += 1
            try:
                client.add_item(item_id, audio=data, tags=[f"cycle{cycle}", f"w{number}"])
            except ClientError as e:
                with ledger.lock:  # sorted out after the kill: errors from before it are real refusals
                    ledger.errors.append((time.monotonic(), item_id, f"{e.status} {e.code}: {e.message}"))
                if e.status == 0 or e.code in ("UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL"):
                    return  # the connection broke (the kill): this add stays unacknowledged
                continue
            with ledger.lock:
                ledger.acked.add(item_id)
    finally:
        client.close()


def verify(server, ledger: Ledger, cycle: int, deep: set[str]) -> dict[str, int]:
    """Check every id ever sent, with one filtered search per cycle and writer (the items carry both as tags); the
    ids of `cycle`, the latest, are also read one by one, and `deep` ids are searched for by their own audio."""
    rest = Client(server.http_url, timeout=30, retry=NO_RETRY)
    counts = {"present": 0, "absent": 0, "unacked_present": 0}
    try:
        for c, w in sorted(set(ledger.group.values())):
            sent = {i for i, g in ledger.group.items() if g == (c, w)}
            hits = rest.search_text("a sound", k=100, filter={"tags_all": [f"cycle{c}", f"w{w}"]}).hits
            found = {h.id: h.item for h in hits}
            assert len(found) == len(hits) and set(found) <= sent, sorted(set(found) - sent)
            lost = ledger.acked & (sent - set(found))
            assert not lost, f"acknowledged items lost (or unsearchable) after a SIGKILL: {sorted(lost)}"
            for item_id, item in found.items():
                assert item_id not in ledger.rejected, (item_id, ledger.rejected[item_id])
                assert item.content_hash == ledger.hashes[item_id], item_id
                assert set(item.tags) == {f"cycle{c}", f"w{w}"}, item
            for item_id in sent - set(found):  # unacknowledged and not searchable: then not stored at all
                for call in (rest.get_item, rest.search_item):
                    with pytest.raises(ClientError) as e:
                        call(item_id)
                    assert e.value.status == 404, (item_id, e.value)
                if item_id in deep:
                    found_by_audio = rest.search_audio(ledger.data[item_id], k=100)
                    assert item_id not in found_by_audio.ids, f"{item_id} is searchable but not stored"
            if c == cycle:
                for item_id in found:  # stored whole: readable, with its embedding
                    assert rest.get_item(item_id) == found[item_id]
                    rest.search_item(item_id, k=1)
            for item_id in deep & set(found):
                scores = {h.id: h.score for h in rest.search_audio(ledger.data[item_id], k=100).hits}
                assert scores.get(item_id, 0) > 1 - 1e-4, f"{item_id} is stored but its own audio does not find it"
            counts["present"] += len(found)
            counts["absent"] += len(sent) - len(found)
            counts["unacked_present"] += len(set(found) - ledger.acked)
        stats = rest.stats()
        assert stats.items == counts["present"], f"{stats.items} items stored, {counts['present']} expected"
        assert len(rest.search_text("a sound", k=10).hits) == min(10, counts["present"])
    finally:
        rest.close()
    return counts


@pytest.mark.slow
def test_sigkill_during_ingestion_loses_no_acknowledged_item(tiny_bundle, tmp_path):
    rng = random.Random(20240229)
    ledger = Ledger()
    index_dir = tmp_path / "index"
    server = start_server(tiny_bundle, tmp_path, index_dir=index_dir)
    kills = 0
    try:
        for cycle in range(CYCLES):
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=writer,
                    args=(
                        server.http_url if face == "rest" else server.grpc_address,
                        face,
                        number,
                        cycle,
                        ledger,
                        stop,
                    ),
                )
                for face, number in WRITERS
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.2, 0.9))  # a random moment of the ingestion
            killed_at = time.monotonic()
            server.kill()  # SIGKILL: no shutdown code runs
            kills += 1
            stop.set()
            for t in threads:
                t.join(30)
                assert not t.is_alive()
            ledger.rejected.update({i: e for t, i, e in ledger.errors if t < killed_at})
            ledger.errors.clear()
            server = start_server(tiny_bundle, tmp_path, index_dir=index_dir)
            this_cycle = sorted(i for i, (c, _) in ledger.group.items() if c == cycle)
            older = sorted(set(ledger.data) - set(this_cycle))
            deep = (
                (set(this_cycle) - ledger.acked)
                | set(rng.sample(this_cycle, min(8, len(this_cycle))))
                | set(rng.sample(older, min(5, len(older))))
            )
            counts = verify(server, ledger, cycle, deep)
            assert counts["present"] >= len(ledger.acked)
        assert kills >= 10
        assert len(ledger.acked) >= 3 * CYCLES, f"too few adds were acknowledged to mean much: {len(ledger.acked)}"
        assert not ledger.rejected, ledger.rejected
        verify(server, ledger, CYCLES - 1, deep=set(rng.sample(sorted(ledger.data), min(30, len(ledger.data)))))
    finally:
        server.stop()
