"""Captioning: captions guided by given or predicted AudioSet tags, and the caption micro-batcher's grouping of
clips that share decoding options into one beam search."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from blat_contract.beam import DecodingOptions
from blat_contract.labels import tags_to_multi_hot
from blat_gateway.errors import BadRequest, NotFound
from blat_gateway.runtime import ModelRuntime
from blat_gateway.services.context import Context

MAX_BEAM = 10


@dataclass(frozen=True)
class CaptionResult:
    text: str
    log_prob: float
    guide_tags: list[str]  # the AudioSet tags that guided the captioner: given, or predicted
    tags_predicted: bool  # the guide tags were predicted by the bundle's tagger (none were given)


def caption_batch(runtime: ModelRuntime, jobs: Sequence[tuple[np.ndarray, np.ndarray | None, DecodingOptions]]) -> list:
    """What the caption micro-batcher runs: clips that share decoding options are captioned in one beam search; no
    tags = an all-zero tag vector."""
    out: list = [None] * len(jobs)
    groups: dict[DecodingOptions, list[int]] = {}
    for i, (_, _, options) in enumerate(jobs):
        groups.setdefault(options, []).append(i)
    n_tags = runtime.manifest.captioner.n_tags
    for options, idx in groups.items():
        tags = np.stack([jobs[i][1] if jobs[i][1] is not None else np.zeros(n_tags, np.float32) for i in idx])
        for i, hyps in zip(idx, runtime.captions([jobs[i][0] for i in idx], tags, options)):
            out[i] = hyps
    return out


class CaptioningService:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def caption(
        self, data: bytes, tags: Sequence[str] = (), n_best: int = 1, beam_size: int = 0
    ) -> list[CaptionResult]:
        """Captions guided by `tags`; without tags, by the clip's confident predicted tags (bundles with a tagger;
        settings.predict.caption_tags of them), else unguided. Each answer names the tags that guided it."""
        ctx = self.ctx
        spec = ctx.manifest.captioner
        if spec is None:
            raise NotFound(f"bundle {ctx.manifest.id} has no captioner")
        beam = beam_size or spec.beam_size
        if not 1 <= beam <= MAX_BEAM or not 1 <= n_best <= beam:
            raise BadRequest(f"need 1 <= n_best <= beam_size <= {MAX_BEAM}, got n_best={n_best}, beam_size={beam}")
        for i, tag in enumerate(tags):
            ctx.check_text(tag, f"tags[{i}]")
        try:
            multi_hot = tags_to_multi_hot(tags) if tags else None
        except KeyError as e:
            raise BadRequest(f"unknown AudioSet tag(s): {e.args[0]}") from None
        audio = ctx.decode(data)
        guide, predicted = list(tags), False
        p = ctx.settings.predict
        if not tags and spec.use_tags and ctx.runtime.has_tagger and p.caption_tags:
            guide = list(ctx.runtime.predicted_tags(*ctx.analyze(audio.samples), p.tag_threshold, p.caption_tags))
            predicted = bool(guide)
            multi_hot = tags_to_multi_hot(guide) if guide else None
        options = DecodingOptions(beam_size=beam, max_tokens=spec.max_tokens, n_best=n_best)
        hyps = ctx.caption_batcher.submit((audio.samples, multi_hot, options), ctx.timeout)
        return [CaptionResult(text, log_prob, guide, predicted) for text, log_prob in hyps]

    def guided(self, samples: np.ndarray, tags: Sequence[str]) -> str:
        """One best caption of a clip, guided by its first settings.predict.caption_tags `tags` (a stored item's
        predicted caption), through the caption batcher."""
        ctx, spec = self.ctx, self.ctx.manifest.captioner
        options = DecodingOptions(beam_size=spec.beam_size, max_tokens=spec.max_tokens)
        guide = tags_to_multi_hot(list(tags)[: ctx.settings.predict.caption_tags])
        return ctx.caption_batcher.submit((samples, guide, options), ctx.timeout)[0][0]
