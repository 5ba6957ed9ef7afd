"""blat_contract.labels: the AudioSet class list and multi-hot tag vectors."""

from __future__ import annotations

import numpy as np
import pytest

from blat_contract.labels import NUM_AUDIOSET_CLASSES, audioset_labels, tags_to_multi_hot


def test_527_unique_labels_in_ontology_order():
    labels = audioset_labels()
    assert len(labels) == NUM_AUDIOSET_CLASSES == 527
    assert len(set(labels)) == 527
    # Known rows of AudioSet's class_labels_indices.csv
    assert labels[0] == "Speech"
    assert labels[1] == "Male speech, man speaking"
    assert labels[526] == "Field recording"


def test_multi_hot():
    labels = audioset_labels()
    v = tags_to_multi_hot(["Speech", "field recording", labels[100]])  # case-insensitive
    assert v.shape == (527,) and v.dtype == np.float32
    assert set(np.nonzero(v)[0]) == {0, 100, 526}
    assert v.sum() == 3.0
    assert tags_to_multi_hot(["Speech", "Speech"]).sum() == 1.0  # duplicates don't count twice
    assert not tags_to_multi_hot([]).any()


def test_every_label_round_trips():
    labels = audioset_labels()
    for i, name in enumerate(labels):
        assert np.argmax(tags_to_multi_hot([name])) == i


def test_unknown_tag_is_named():
    with pytest.raises(KeyError) as e:
        tags_to_multi_hot(["Speech", "Wookiee roar"])
    assert "Wookiee roar" in str(e.value)
