"""Precomputed embeddings as a rebuild source: the folder a sharded embedding job leaves (`python -m blat_jobs.embed`).

The contract between that job and the gateway (blat_jobs/embed.py writes it, this module reads it):

    <folder>/complete.json     {"bundle_id", "items", "dim", "shards": ["shard-00000.npz", ...], ...}, written last
    <folder>/shard-NNNNN.npz   records: JSON strings {id, source_uri, duration_s, tags, caption, content_hash,
                               extra} (extra: predicted tags' scores, when tags were predicted)
                               embeddings: float32 (n, D), row i belonging to records[i]

`complete.json` exists only once a merge found every shard whole, so a folder without it is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from blat_gateway.errors import BadRequest
from blat_gateway.index.rebuild import Entry, Skipped
from blat_gateway.index.records import ItemRecord

COMPLETE = "complete.json"
RECORD_FIELDS = ("id", "source_uri", "duration_s", "tags", "caption", "content_hash", "extra")


def read_folder(
    folder: str | Path,
    check: Callable[[ItemRecord], ItemRecord] = lambda r: r,
) -> tuple[dict, Callable[[], Iterator[Entry]]]:
    """(the job's summary, a callable yielding (ItemRecord, (D,) embedding) for every item, or `Skipped` for a
    record that is not a valid item or fails `check`, e.g. the stored-string limits); BadRequest when the folder is
    not a finished embedding job."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / COMPLETE).read_text())
        shards = [folder / name for name in summary["shards"]]
        int(summary["items"]), str(summary["bundle_id"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BadRequest(
            f"{folder} is not a finished embedding job: no readable {COMPLETE} "
            "(run python -m blat_jobs.embed run, then merge)"
        ) from None
    missing = [p.name for p in shards if not p.is_file() or p.parent != folder]
    if missing:
        raise BadRequest(f"{folder}: shards named by {COMPLETE} are missing: {missing[:5]}")

    def pairs() -> Iterator[Entry]:
        for path in shards:
            with np.load(path, allow_pickle=False) as z:
                records, embeddings = z["records"].tolist(), z["embeddings"]
            if len(records) != len(embeddings):
                raise ValueError(f"{path.name}: {len(records)} records, {len(embeddings)} embeddings")
            for n, (text, vec) in enumerate(zip(records, embeddings)):
                try:
                    r = json.loads(text)
                    yield check(ItemRecord(**{k: r[k] for k in RECORD_FIELDS if k in r})), vec
                except BadRequest as e:
                    yield Skipped(f"{path.name} record {n}: {e.message}")

    return summary, pairs
