"""blat.models.captioner: the tag-guided captioner (tiny-captioner) and its decoding."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
import pytest
import torch

import blat
from blat.models import TagGuidedCaptioner, build_model
from blat.models.captioner import tags_tensor
from blat_contract.beam import DecodingOptions
from blat_contract.labels import audioset_labels
from blat_contract.vocab import END, PAD, SPECIALS, START, UNK, Vocabulary

VOCAB = Vocabulary(SPECIALS + ("dog", "barks", "rain"))
EMITTABLE = [UNK, 4, 5, 6]
TAGS = [["Dog", "Bark"], [], ["Rain", "Speech", "Thunder"]]
LENGTHS = [12_000, 7_000, 700]  # the last is shorter than the tiny encoder's min_samples (960)


def make(use_tags: bool = True, seed: int = 0) -> TagGuidedCaptioner:
    torch.manual_seed(seed)
    cfg = blat.get_model_config("tiny-captioner")
    model = build_model(dataclasses.replace(cfg, use_tags=use_tags), vocab=VOCAB)
    with torch.no_grad():  # sharper next-token distributions, so no two captions nearly tie
        model.classifier.weight.mul_(4.0)
        if model.tag_table is not None:
            model.tag_table.normal_(0.0, 1.0)  # a visible tag effect at random init
    return model.eval()


@pytest.fixture(scope="module")
def model() -> TagGuidedCaptioner:
    return make()


def audio(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    wave = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wave[i, :n] = torch.randn(n, generator=g) * 0.2
    return wave, torch.tensor(lengths)


def tokens_batch():
    return torch.tensor([[START, 4, 5, 6, END], [START, 6, 4, END, PAD], [START, UNK, END, PAD, PAD]])


def test_config_defaults_follow_blat():
    cfg = blat.get_model_config("blat-captioner")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ffn_dim, cfg.n_tags, cfg.max_tokens) == (
        256,
        2,
        4,
        1024,
        527,
        20,
    )


@torch.no_grad()
def test_teacher_forcing_shape(model):
    wave, lengths = audio()
    logits = model(wave, lengths, tags_tensor(TAGS), tokens_batch())
    assert logits.shape == (3, 5, len(VOCAB))
    assert torch.isfinite(logits).all()


@torch.no_grad()
def test_tag_vector_is_the_mean_of_the_tag_rows(model):
    tags = tags_tensor(TAGS)
    vec = model.tag_vector(tags, 3, "cpu")
    labels = [lab.lower() for lab in audioset_labels()]
    table = model.tag_table.detach()
    for i, names in enumerate(TAGS):
        rows = [labels.index(n.lower()) for n in names]
        expected = table[rows].mean(0) if rows else torch.zeros(model.cfg.d_model)
        torch.testing.assert_close(vec[i], expected)
    assert not vec[1].any()
    assert not model.tag_vector(None, 2, "cpu").any()


@torch.no_grad()
def test_tags_change_the_logits(model):
    wave, lengths = audio()
    toks = tokens_batch()
    a = model(wave, lengths, tags_tensor(TAGS), toks)
    b = model(wave, lengths, tags_tensor([["Speech"], ["Dog"], ["Music"]]), toks)
    none = model(wave, lengths, None, toks)
    assert (a[0] - b[0]).abs().max() > 1e-2 and (a[2] - b[2]).abs().max() > 1e-2
    torch.testing.assert_close(a[1], none[1])  # no tags at all == tags=None
    assert (a[0] - none[0]).abs().max() > 1e-2


@torch.no_grad()
def test_without_tags_there_are_no_tag_parameters():
    plain = make(use_tags=False)
    assert plain.tag_table is None
    assert not any("tag" in name for name, _ in plain.named_parameters())
    assert not any("tag" in name for name in plain.state_dict())
    assert sum(p.numel() for p in make().parameters()) - sum(p.numel() for p in plain.parameters()) == 527 * 64
    wave, lengths = audio()
    toks = tokens_batch()
    torch.testing.assert_close(plain(wave, lengths, tags_tensor(TAGS), toks), plain(wave, lengths, None, toks))


@torch.no_grad()
def test_decoder_is_causal(model):
    wave, lengths = audio()
    memory, valid, tag_vec = model.encode(wave, lengths, tags_tensor(TAGS))
    toks = torch.tensor([[START, 4, 5, 6, 4, 5]] * 3)
    base = model.decode(toks, memory, valid, tag_vec)
    for t in range(1, toks.shape[1]):
        changed = toks.clone()
        changed[:, t:] = torch.tensor([6, 4, UNK, 5, 6][: toks.shape[1] - t])
        out = model.decode(changed, memory, valid, tag_vec)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-5, rtol=1e-5)
        assert (out[:, t:] - base[:, t:]).abs().max() > 1e-4  # later positions do see the change


@torch.no_grad()
def test_memory_padding_is_ignored(model):
    """A clip's caption logits do not depend on the other clips of its batch."""
    wave, lengths = audio()
    tags = tags_tensor(TAGS)
    toks = tokens_batch()
    batch = model(wave, lengths, tags, toks)
    for i, n in enumerate(LENGTHS):
        alone = model(wave[i : i + 1, :n], None, tags[i : i + 1], toks[i : i + 1])
        torch.testing.assert_close(batch[i], alone[0], atol=1e-4, rtol=1e-4)


def _clip_logp(model, wave, n, tags):
    """log p(next | prefix) for one clip, by running the decoder on the prefix directly."""
    memory, valid, tag_vec = model.encode(wave[None, :n], None, tags[None])

    @functools.cache
    def logp(prefix: tuple[int, ...]) -> np.ndarray:
        logits = model.decode(torch.tensor([prefix]), memory, valid, tag_vec)[0, -1]
        out = torch.log_softmax(logits.double(), -1).numpy()
        out.flags.writeable = False
        return out

    return logp


def _all_prefix_logp(model, wave, n, tags, max_tokens):
    """{prefix: log p(next | prefix)} for every prefix of up to max_tokens emittable words, one decoder call
    per prefix length (the decoder of each row sees only its own prefix)."""
    memory, valid, tag_vec = model.encode(wave[None, :n], None, tags[None])
    table = {}
    for k in range(max_tokens + 1):
        prefixes = [(START, *w) for w in itertools.product(EMITTABLE, repeat=k)]
        rows = len(prefixes)
        logits = model.decode(
            torch.tensor(prefixes), memory.expand(rows, -1, -1), valid.expand(rows), tag_vec.expand(rows, -1)
        )[:, -1]
        for prefix, lp in zip(prefixes, torch.log_softmax(logits.double(), -1).numpy()):
            table[prefix] = lp
    return table


@torch.no_grad()
def test_wide_beam_is_exhaustive(model):
    wave, lengths = audio()
    tags = tags_tensor(TAGS)
    max_tokens = 3
    n_prefixes = sum(len(EMITTABLE) ** k for k in range(max_tokens + 1))  # 85
    hyps = model.generate(wave, lengths, tags, DecodingOptions(beam_size=n_prefixes, max_tokens=max_tokens, n_best=5))
    for i, n in enumerate(LENGTHS):
        logp = _all_prefix_logp(model, wave[i], n, tags[i], max_tokens)
        table = []
        for k in range(max_tokens + 1):
            for words in itertools.product(EMITTABLE, repeat=k):
                prefix, lp = (START,), 0.0
                for w in words:
                    lp += logp[prefix][w]
                    prefix += (w,)
                table.append((lp + logp[prefix][END], words))
        table.sort(key=lambda x: -x[0])
        assert table[0][0] - table[1][0] > 1e-3  # no near-tie at the top, so the comparison is meaningful
        assert hyps[i][0].tokens == table[0][1]
        assert hyps[i][0].log_prob == pytest.approx(table[0][0], abs=1e-4)
        np.testing.assert_allclose([h.log_prob for h in hyps[i]], [s for s, _ in table[:5]], atol=1e-4)


@torch.no_grad()
def test_greedy_is_argmax_decoding(model):
    wave, lengths = audio()
    tags = tags_tensor(TAGS)
    got = model.generate(wave, lengths, tags, DecodingOptions(beam_size=1, max_tokens=6))
    texts = model.greedy(wave, lengths, tags, max_tokens=6)
    for i, n in enumerate(LENGTHS):
        logp = _clip_logp(model, wave[i], n, tags[i])
        prefix = (START,)
        while len(prefix) - 1 < 6:
            p = logp(prefix).copy()
            p[[PAD, START]] = -np.inf
            tok = int(np.argmax(p))
            if tok == END:
                break
            prefix += (tok,)
        assert got[i][0].tokens == prefix[1:]
        assert texts[i] == VOCAB.decode(prefix[1:])


@torch.no_grad()
def test_batched_generate_equals_per_clip(model):
    wave, lengths = audio()
    tags = tags_tensor(TAGS)
    opts = DecodingOptions(beam_size=3, max_tokens=6, n_best=3)
    batched = model.generate(wave, lengths, tags, opts)
    for i, n in enumerate(LENGTHS):
        alone = model.generate(wave[i : i + 1, :n], None, tags[i : i + 1], opts)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        np.testing.assert_allclose([h.log_prob for h in alone], [h.log_prob for h in batched[i]], atol=1e-4)


@torch.no_grad()
def test_caption_returns_vocabulary_words(model):
    wave, lengths = audio()
    caps = model.caption(wave, lengths, tags_tensor(TAGS), DecodingOptions(beam_size=3, max_tokens=5))
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    allowed = set(VOCAB.tokens[UNK:])
    for c in caps:
        assert set(c.split()) <= allowed and len(c.split()) <= 5


def test_vocab_size_mismatch_is_an_error():
    cfg = dataclasses.replace(blat.get_model_config("tiny-captioner"), vocab_size=99)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(cfg, vocab=VOCAB)
    model = build_model(blat.get_model_config("tiny-captioner"), vocab=VOCAB)
    assert model.cfg.vocab_size == len(VOCAB) and model.classifier.out_features == len(VOCAB)
