"""The rebuild-batching benchmark on the tiny bundle: both batchings embed every clip, length batching pads less,
and a clip's embedding does not depend on which clips share its batch."""

from __future__ import annotations

import json
import re

import numpy as np
import soundfile as sf

from tests.bench import load_bench

rebuild_batching = load_bench("rebuild_batching")


def test_length_batching_pads_less_and_embeds_the_same(tiny_bundle, tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate([0.5, 4.0, 0.5, 0.7, 4.0, 0.6, 0.5, 3.5, 0.8, 0.5]):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(32_000 * seconds))).astype(np.float32), 32_000, subtype="FLOAT")
        rows.append({"id": f"clip{i}", "audio": path.name})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        rebuild_batching.main(
            ["--bundle", str(tiny_bundle), "--manifest", str(tmp_path / "m.jsonl"), "--batch", "4", "--threads", "1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    padded = {
        name: float(re.search(rf"^{name}\s+(\d+)", out, re.M).group(1)) for name in ("file order", "length_batches")
    }
    assert padded["length_batches"] < padded["file order"]
    assert float(re.search(r"difference between the two (\S+)", out).group(1)) < 1e-4
