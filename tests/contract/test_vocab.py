"""blat_contract.vocab: the word-level caption vocabulary."""

from __future__ import annotations

import pytest

from blat_contract.vocab import END, MAX_CAPTION_TOKENS, PAD, SPECIALS, START, UNK, Vocabulary, words

CAPTIONS = ["A dog barks, a dog growls.", "A man speaks", "birds chirp; a DOG barks"]


def test_special_ids():
    assert (PAD, START, END, UNK) == (0, 1, 2, 3)
    assert SPECIALS == ("<pad>", "<start>", "<end>", "<unk>")


def test_words_lowercases_and_drops_punctuation():
    assert words("A Dog's bark, loud!  2 times") == ["a", "dog's", "bark", "loud", "2", "times"]


def test_build_orders_by_frequency_then_alphabetically():
    v = Vocabulary.build(CAPTIONS)
    # counts: a 4, dog 3, barks 2, then 1 each: birds chirp growls man speaks (alphabetical)
    assert v.tokens == SPECIALS + ("a", "dog", "barks", "birds", "chirp", "growls", "man", "speaks")
    assert len(v) == 12


def test_build_min_count():
    v = Vocabulary.build(CAPTIONS, min_count=2)
    assert v.tokens == SPECIALS + ("a", "dog", "barks")


def test_encode_adds_start_end_and_maps_unknown_words():
    v = Vocabulary.build(CAPTIONS)
    ids = v.encode("A cat barks")
    assert ids == [START, v.tokens.index("a"), UNK, v.tokens.index("barks"), END]


def test_encode_truncates_words_to_max_tokens():
    v = Vocabulary.build(CAPTIONS)
    long = " ".join(["dog"] * 50)
    ids = v.encode(long)
    assert len(ids) == MAX_CAPTION_TOKENS + 2 and ids[0] == START and ids[-1] == END
    ids = v.encode("a dog barks a dog", max_tokens=3)
    assert ids == [START, 4, 5, 6, END]
    assert v.encode("", max_tokens=3) == [START, END]


def test_decode_stops_at_end_and_skips_pad_start():
    v = Vocabulary.build(CAPTIONS)
    dog, barks = v.tokens.index("dog"), v.tokens.index("barks")
    assert v.decode([START, dog, PAD, barks, END, dog, dog]) == "dog barks"
    assert v.decode([UNK, dog, 999]) == "<unk> dog <unk>"  # out of range ids read as unknown
    assert v.decode([END, dog]) == ""
    assert v.decode(v.encode("a dog barks")) == "a dog barks"


def test_json_round_trip():
    v = Vocabulary.build(CAPTIONS)
    w = Vocabulary.from_json(v.to_json())
    assert w == v and w.encode("a man speaks") == v.encode("a man speaks")


@pytest.mark.parametrize(
    "tokens",
    [
        ("<pad>", "<start>", "<end>"),  # too short
        ("<start>", "<pad>", "<end>", "<unk>", "a"),  # wrong order
        SPECIALS + ("a", "b", "a"),  # duplicate
    ],
)
def test_bad_vocabularies_fail(tokens):
    with pytest.raises(ValueError):
        Vocabulary(tokens)


def test_from_json_rejects_bad_vocab():
    with pytest.raises(ValueError):
        Vocabulary.from_json('["a", "b", "c", "d"]')
