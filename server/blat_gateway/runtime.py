"""The model verbs over any backend: encode audio/text, tag, caption. Torch-free; shared by REST and gRPC.

Audio arrives as mono float32 at the bundle's sample rate (decoding and resampling happen before this).
Batches are padded to the longest clip, with true lengths passed along, so the graphs mask the padding.
The memory of a model call grows with its input (clips x longest clip for the audio graphs, clips x beam for the
captioner's decoder), so a batch larger than the runtime's budget is cut into several calls of neighbours in length
(`sub_batches`); the graphs mask by length, so how a batch is cut never changes a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from blat_contract.beam import DecodingOptions, Hypothesis, beam_search
from blat_contract.bundle import LabelBank
from blat_contract.vocab import Vocabulary
from blat_gateway.backends import Backend
from blat_gateway.tagging import LabelSet, confident_tags, head_index


def sub_batches(lengths: Sequence[int], max_padded: int, max_items: int) -> list[list[int]]:
    """Indices of clips of these `lengths`, shortest first, cut into batches of at most `max_items` whose padded size
    (clips x longest) is at most `max_padded`; a clip longer than that alone is a batch of its own."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < max_items and (len(batches[-1]) + 1) * lengths[i] <= max_padded:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def pad_batch(waves: Sequence[np.ndarray], min_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Clips of any lengths -> (B, N) zero-padded float32 (N >= min_samples) and (B,) int64 true lengths."""
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    batch = np.zeros((len(waves), max(int(lengths.max()), min_samples)), dtype=np.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return batch, lengths


class ModelRuntime:
    def __init__(
        self, bundle_dir: str | Path, backend: Backend, max_call_seconds: float = 120.0, max_caption_rows: int = 32
    ):
        """max_call_seconds: padded audio per audio-graph call (clips x longest clip); max_caption_rows: hypotheses
        per captioner-decoder call (clips x beam). Larger batches are cut into several calls."""
        self.bundle_dir, self.backend = Path(bundle_dir), backend
        self.manifest = m = backend.manifest
        self.max_call_samples = max(int(max_call_seconds * m.audio.sample_rate), m.audio.min_samples)
        self.max_caption_rows = max_caption_rows
        self.tokenizer = Tokenizer.from_file(str(self.bundle_dir / m.text.tokenizer))
        self.tokenizer.enable_truncation(max_length=m.text.max_tokens)
        self.tokenizer.enable_padding(pad_id=m.text.pad_id)
        self.labels = LabelBank.load(self.bundle_dir / m.labels.file)
        tagger = m.tagger
        # The 527 labels as /v1/tag scores them by default: the tagger's (mixed as the bundle says) and zero-shot.
        self.default_labels = LabelSet(
            self.labels.names,
            self.labels.embeddings,
            self.labels.scale,
            self.labels.bias,
            head_index(self.labels.names, tagger.labels if tagger else None),
            tagger.zero_shot_weight if tagger else 0.0,
        )
        self.vocab = Vocabulary.from_json((self.bundle_dir / m.captioner.vocab).read_text()) if m.captioner else None

    @property
    def sample_rate(self) -> int:
        return self.manifest.audio.sample_rate

    def encode_audio(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """-> (B, D) unit-norm audio embeddings."""
        return self.analyze_audio(waves, tagger=False)[0]

    def audio_calls(
        self, waves: Sequence[np.ndarray], per_clip_rows: int = 1, max_rows: int | None = None
    ) -> list[list[int]]:
        """How a batch of clips is cut into model calls within the budget (indices into `waves`)."""
        lengths = [max(len(w), self.manifest.audio.min_samples) for w in waves]
        return sub_batches(lengths, self.max_call_samples, max(1, (max_rows or len(waves)) // per_clip_rows))

    @property
    def has_tagger(self) -> bool:
        return self.manifest.tagger is not None

    def analyze_audio(self, waves: Sequence[np.ndarray], tagger: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """-> embeddings (B, D) and, when the bundle has a supervised tagger, its class probabilities (B, K)."""
        emb, probs = None, None
        for idx in self.audio_calls(waves):
            e, frames, frame_lengths = self.audio_features([waves[i] for i in idx])
            emb = np.empty((len(waves), e.shape[1]), e.dtype) if emb is None else emb
            emb[idx] = e
            if tagger and self.has_tagger:
                p = self.class_probs(frames, frame_lengths)
                probs = np.empty((len(waves), p.shape[1]), p.dtype) if probs is None else probs
                probs[idx] = p
        return emb, probs

    def predicted_tags(
        self, embedding: np.ndarray, probs: np.ndarray | None, threshold: float, limit: int
    ) -> dict[str, float]:
        """One clip's confident tags, as /v1/tag ranks the 527 labels by default (at most `limit` scoring at least
        `threshold`, best first). Empty without a tagger: a bundle without one predicts no tags."""
        if probs is None:
            return {}
        scores = self.default_labels.scores(embedding[None, :], probs[None, :])[0]
        return confident_tags(self.default_labels.names, scores, threshold, limit)

    def class_probs(self, frames: np.ndarray, frame_lengths: np.ndarray) -> np.ndarray:
        """(B, T, C) frames with (B,) valid counts -> (B, K) probabilities of the tagger's labels."""
        out = self.backend.run(
            "audio_tagger", {"frames": frames.astype(np.float32), "frame_lengths": frame_lengths.astype(np.int64)}
        )
        return out["class_probs"]

    def audio_features(self, waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> embeddings (B, D), frames (B, T, C), frame_lengths (B,), in one call whatever its size."""
        batch, lengths = pad_batch(waves, self.manifest.audio.min_samples)
        out = self.backend.run("audio_encoder", {"waveform": batch, "lengths": lengths})
        return out["audio_embedding"], out["frames"], out["frame_lengths"]

    def pool_frames(self, frames: np.ndarray, frame_lengths: np.ndarray) -> np.ndarray:
        """(B, T, C) frame features with (B,) valid counts -> (B, D) embeddings (windowed tagging)."""
        out = self.backend.run(
            "audio_pool", {"frames": frames.astype(np.float32), "frame_lengths": frame_lengths.astype(np.int64)}
        )
        return out["audio_embedding"]

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """-> (B, D) unit-norm text embeddings."""
        enc = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        return self.backend.run("text_encoder", {"input_ids": ids, "attention_mask": mask})["text_embedding"]

    def caption(
        self, waves: Sequence[np.ndarray], tags: np.ndarray | None = None, options: DecodingOptions | None = None
    ) -> list[list[Hypothesis]]:
        """Beam search over the captioner graphs, in one call of each whatever its size; tags (B, 527) multi-hot or
        None (no tag guidance)."""
        if self.manifest.captioner is None:
            raise ValueError(f"bundle {self.manifest.id} has no captioner")
        spec = self.manifest.captioner
        options = options or DecodingOptions(beam_size=spec.beam_size, max_tokens=spec.max_tokens)
        batch, lengths = pad_batch(waves, self.manifest.audio.min_samples)
        tags = np.zeros((len(waves), spec.n_tags), np.float32) if tags is None else tags.astype(np.float32)
        enc = self.backend.run("captioner_encoder", {"waveform": batch, "lengths": lengths, "tags": tags})

        def step(seqs: np.ndarray, origin: np.ndarray) -> np.ndarray:
            return self.backend.run(
                "captioner_decoder",
                {
                    "tokens": seqs,
                    "memory": enc["memory"][origin],
                    "memory_lengths": enc["memory_lengths"][origin],
                    "tag_vector": enc["tag_vector"][origin],
                },
            )["log_probs"]

        return beam_search(step, len(waves), options)

    def captions(
        self, waves: Sequence[np.ndarray], tags: np.ndarray | None, options: DecodingOptions
    ) -> list[list[tuple[str, float]]]:
        """Per clip, its n-best (caption, log-probability), in calls within the budget (clips x beam rows, padded
        audio): each a whole beam search where the backend runs one (Triton's BLS `captioner`: no round trip per
        decoding step), else by `caption` here."""
        spec = self.manifest.captioner
        tags = np.zeros((len(waves), spec.n_tags), np.float32) if tags is None else tags.astype(np.float32)
        whole = getattr(self.backend, "captions", None)
        out: list = [None] * len(waves)
        for idx in self.audio_calls(waves, options.beam_size, self.max_caption_rows):
            clips = [waves[i] for i in idx]
            if whole is None:
                found = [
                    [(self.caption_text(h), float(h.log_prob)) for h in hyps]
                    for hyps in self.caption(clips, tags[idx], options)
                ]
            else:
                found = whole(*pad_batch(clips, self.manifest.audio.min_samples), tags[idx], options)
            for i, hyps in zip(idx, found):
                out[i] = hyps
        return out

    def caption_text(self, hyp: Hypothesis) -> str:
        return self.vocab.decode(hyp.tokens)
