"""The settings of each pipeline stage: one frozen dataclass per section of a recipe (`blat.pipeline.recipe`).

They live here, apart from the stages that run them, so that the recipe, every stage and the run command share them
without importing one another. This module imports only `dataclasses` and `blat_contract.config`.
"""

from __future__ import annotations

import dataclasses

from blat_contract.config import ConfigError

# --- scenes / captioner / captioning: steps 2-4 (scenes.py, train_captioner.py, caption.py) ---


@dataclasses.dataclass(frozen=True)
class ScenesConfig:
    """Step 2: simulated scenes (an AudioCaps-like captioned split, an AudioSet-like tags-only split, test sets)."""

    n_captioned: int = 600  # scenes with reference captions: stage 1 trains the captioner on them
    n_tags_only: int = 1200  # scenes whose captions are held back: stage 2 captions them from audio + tags
    n_test_scenes: int = 150  # held-out scenes (test sources only); test_events = every test-source clip
    canvas_s: float = 5.0  # scene length, seconds
    sample_rate: int = 32000  # Hz, mono
    event_weights: tuple[float, ...] = (0.3, 0.4, 0.3)  # probability of 1, 2, 3, ... events per scene
    p_background: float = 0.5  # chance of an ambience bed under the events (when the split has one)
    p_overlap: float = 0.35  # chance that an event starts inside the previous one
    max_event_s: float = 4.0  # longest piece cut from an event clip (also <= canvas / number of events)
    background_min_s: float = 1.0  # shortest clip usable as a (looped) background
    event_level_db: tuple[float, float] = (-26.0, -16.0)  # RMS of each event, dBFS
    snr_db: tuple[float, float] = (3.0, 15.0)  # mean event level over the background's RMS, dB
    n_captions: int = 5  # reference captions per scene (AudioCaps eval / Clotho use 5)
    split_fractions: tuple[float, float, float] = (0.35, 0.45, 0.20)  # of sources: captioned, tags_only, test
    # The captioned and tags-only groups' own recordings also join their splits as single-event rows (ids
    # "<split>/e00000", cut to the canvas), as AudioCaps and AudioSet hold recordings, not only mixtures.
    source_events: bool = False
    seed: int = 0

    def __post_init__(self):
        if min(self.n_captioned, self.n_tags_only, self.n_test_scenes) < 0 or self.n_captioned == 0:
            raise ValueError("scene counts must be >= 0 and n_captioned >= 1")
        if not self.event_weights or min(self.event_weights) < 0 or sum(self.event_weights) <= 0:
            raise ValueError(f"event_weights must be non-negative with a positive sum, got {self.event_weights}")
        if len(self.split_fractions) != 3 or min(self.split_fractions) <= 0:
            raise ValueError(f"split_fractions needs 3 positive numbers, got {self.split_fractions}")
        if self.canvas_s <= 0 or self.max_event_s <= 0 or self.n_captions < 1:
            raise ValueError("canvas_s, max_event_s must be > 0 and n_captions >= 1")
        for name in ("event_level_db", "snr_db"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: low {lo} > high {hi}")


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
    """Step 3 (stage 1): train the tag-guided captioner on the captioned split (teacher forcing)."""

    arch: str = "small-captioner"  # a registry architecture (blat/model_configs/*.json with kind "captioner")
    use_tags: bool = True  # False trains the ablation "captioner without tags"
    # Std of the initial tag table. The word embeddings start at N(0, 1) (torch's default); the model's own 0.02
    # makes the added tag vector ~50x weaker than the words, and small runs then learn to ignore the tags.
    tag_init_std: float = 1.0
    min_count: int = 1  # words seen fewer times in the training captions become <unk>
    max_tokens: int = 20  # words per caption (longer captions are cut), BLAT's cap
    epochs: int = 10
    batch_size: int = 32  # caption pairs per step: batch_size // captions_per_clip clips, each with all its captions
    lr: float = 5e-4  # Adam, constant (the paper's setting)
    label_smoothing: float = 0.1
    clip_s: float = 10.0  # longer clips are randomly cropped to this many seconds
    # Learning-rate multiplier of the audio tower. 0 freezes it (a pretrained tower such as aisfx): eval mode, and
    # its frames computed once per clip when no clip is longer than clip_s.
    tower_lr_scale: float = 1.0
    tower_cache: str = ""  # folder for a frozen tower's per-clip frames, shared by runs and seeds ("" = none)
    seed: int = 0
    device: str = "cpu"  # "cuda" works too
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.min_count < 1 or self.max_tokens < 1:
            raise ValueError("epochs, batch_size, min_count, max_tokens must be >= 1 and lr > 0")
        if self.tower_lr_scale < 0:
            raise ValueError(f"tower_lr_scale must be >= 0, got {self.tower_lr_scale}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


CAPTIONING_MODES = ("captioner", "no_tags", "templates")


@dataclasses.dataclass(frozen=True)
class CaptioningConfig:
    """Step 4 (stage 2): caption the tags-only split with beam search; sharded and resumable."""

    mode: str = (
        "captioner"  # captioner: audio + tags; no_tags: audio only (ablation b); templates: tags only (ablation c)
    )
    split: str = "tags_only"  # which scene split to caption
    beam_size: int = 3
    max_tokens: int = 20  # words before the end token is forced
    length_penalty: float = 0.0  # GNMT alpha; 0 ranks by summed log-probability (BLAT)
    batch_size: int = 32  # clips per forward pass
    shard_size: int = 200  # rows per shard: the unit Ray schedules and retries; its decoded audio is one object
    tower_cache: str = ""  # folder for the audio tower's per-clip frames, shared with stage 1 ("" = none)
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def __post_init__(self):
        if self.mode not in CAPTIONING_MODES:
            raise ValueError(f"captioning.mode must be one of {CAPTIONING_MODES}, got {self.mode!r}")
        if min(self.beam_size, self.max_tokens, self.batch_size, self.shard_size) < 1:
            raise ValueError("beam_size, max_tokens, batch_size and shard_size must be >= 1")


# --- pretrain: stage 3 (pretrain.py) ---


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Stage 3 settings (a recipe's `pretrain` section). Defaults are the BLAT paper's where it has one."""

    model: str = "small-cnn-minilm"  # registry name, a checkpoint to continue from, or a DualEncoderConfig JSON file
    panns_checkpoint: str | None = None  # PANNs CNN14 .pth to initialise the audio tower from (CNN14 widths only)
    panns_trusted: bool = False  # allow full unpickling of that file (only for files you trust)
    freeze_text: bool = False  # fix the text tower: pooled outputs cached once; audio tower, both heads, scale train
    # Learning-rate multiplier of the audio tower. 0 freezes it (a pretrained tower such as aisfx): eval mode, and its
    # pooled outputs computed once per clip when no training clip is longer than clip_seconds.
    tower_lr_scale: float = 1.0
    tower_cache: str = ""  # folder for a frozen tower's per-clip outputs, shared by runs and seeds ("" = none)
    use_captioned: bool = False  # also train on the manifest's `captioned` split with its reference captions
    epochs: int = 10
    batch_size: int = 128  # global; each of the N processes takes batch_size / N
    lr: float = 1e-4  # Adam
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05  # linear warm-up over this fraction of all steps, then cosine decay to 0
    clip_seconds: float = 10.0  # random training crop; shorter clips are zero-padded (their true length is passed)
    max_logit_scale: float = 100.0  # exp(logit_scale) is clamped to this after every step (CLIP)
    sync_batchnorm: bool = True  # distributed: BatchNorm statistics over the global batch, not each process's
    val_size: int = 1000  # pairs held out from training to pick the best epoch (0: keep the last epoch)
    val_captions: str = "training"  # held-out pairs scored with "training" captions (the paper) or "references"
    val_split: str = ""  # with a separate validation manifest: use this split only ("" = every captioned row)
    eval_batch_size: int = 16  # clips per forward pass in validation
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs); for smoke runs and timing
    log_every: int = 10  # steps between JSON log lines (every step goes to steps.jsonl)
    seed: int = 0  # model init, held-out pairs, data order and crops
    device: str = "auto"  # auto: cuda:<LOCAL_RANK> if available, else cpu
    workers: int = 0  # DataLoader worker processes per training process
    num_threads: int = 0  # torch CPU threads per process (0: CPU cores / processes on this node)

    def __post_init__(self):
        if self.batch_size < 2:
            raise ConfigError("pretrain.batch_size must be >= 2 (a contrastive batch needs negatives)")
        if self.val_captions not in ("training", "references"):
            raise ConfigError(f"pretrain.val_captions must be 'training' or 'references', got {self.val_captions!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError("pretrain.warmup_fraction must be in [0, 1)")
        if self.clip_seconds <= 0 or self.epochs < 1 or self.lr <= 0:
            raise ConfigError("pretrain.clip_seconds, epochs and lr must be positive")
        if self.tower_lr_scale < 0:
            raise ConfigError("pretrain.tower_lr_scale must be >= 0")
        if self.max_logit_scale <= 1:
            raise ConfigError("pretrain.max_logit_scale must be > 1")


# --- evaluate: stage 4 (evaluate.py) ---

PROMPT = "this is a sound of {label}"  # MS-CLAP's template; export's label bank uses the same (label lower-cased)
# Every protocol blat.pipeline.evaluate registers (PROTOCOLS there), by name: what the config is checked against.
PROTOCOL_NAMES = ("zero_shot_events", "tagging_scenes", "retrieval_scenes")
DEFAULT_PROTOCOLS = ("zero_shot_events", "tagging_scenes", "retrieval_scenes")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Stage 4 settings (a recipe's `evaluate` section)."""

    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS  # names in PROTOCOL_NAMES, run in this order
    prompt: str = PROMPT  # zero-shot template; "{label}" is the lower-cased AudioSet display name
    batch_size: int = 16  # clips per audio forward pass (sorted by length, zero-padded with true lengths)
    text_batch_size: int = 256  # captions / prompts per text forward pass
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    meteor: bool = False  # caption METEOR through pycocoevalcap's jar (needs Java and pycocoevalcap); else left out
    # protocol -> the manifest split it reads instead of its own, e.g. {"tagging_scenes": "test_events"}
    splits: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        unknown = [p for p in self.protocols if p not in PROTOCOL_NAMES]
        if unknown:
            raise ConfigError(f"evaluate.protocols: unknown {unknown}; known: {sorted(PROTOCOL_NAMES)}")
        unknown = [p for p in self.splits if p not in PROTOCOL_NAMES]
        if unknown or not all(isinstance(v, str) and v for v in self.splits.values()):
            raise ConfigError(
                f"evaluate.splits maps protocol names {sorted(PROTOCOL_NAMES)} to split names, got {self.splits}"
            )
        if "{label}" not in self.prompt:
            raise ConfigError(f"evaluate.prompt must contain {{label}}, got {self.prompt!r}")
        if self.batch_size < 1 or self.text_batch_size < 1:
            raise ConfigError("evaluate.batch_size and text_batch_size must be >= 1")
