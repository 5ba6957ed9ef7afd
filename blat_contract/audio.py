"""Audio front-end settings shared by training, export and serving.

The BLAT defaults are named constants derived from each other (units in the names);
`FrontEndConfig` carries the same values per model and travels in checkpoints and bundles.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 32_000  # Hz, BLAT / PANNs CNN14
N_FFT = 1024  # samples per STFT window (32 ms)
HOP_LENGTH = 320  # samples between frames (10 ms)
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
N_MELS = 64
F_MIN = 50.0  # Hz
F_MAX = 14_000.0  # Hz
CLIP_SECONDS = 10  # training crop length
CLIP_SAMPLES = CLIP_SECONDS * SAMPLE_RATE  # 320_000
AMIN = 1e-10  # power floor before 10*log10, so silence is -100 dB rather than -inf


MEL_SCALES = ("slaney", "htk")  # slaney: linear below 1 kHz, log above; htk: 2595 * log10(1 + f / 700)
MEL_NORMS = ("slaney", "l1", "none")  # slaney: every filter has the same area; l1: weights sum to 1; none: peak 1
PAD_MODES = ("reflect", "constant")  # centred frames: mirror each clip at its own ends, or zeros
# db: 10 * log10(max(mel, amin)); log1p: log10(1 + log_gain * mel) / log_divisor; log: ln(mel + log_offset)
COMPRESSIONS = ("db", "log1p", "log")


@dataclass(frozen=True)
class FrontEndConfig:
    """Waveform -> log-mel settings. A periodic Hann window; centred frames, or frames that start at each hop.

    The defaults are BLAT's (CNN14). Other towers change the mel layout, the compression, the padding, the framing
    and magnitude for power; a tower trained at a higher rate can keep its band layout (`f_max` above Nyquist): bands
    above Nyquist stay empty.
    """

    sample_rate: int = SAMPLE_RATE  # Hz; input audio must be resampled to this
    n_fft: int = N_FFT  # FFT size in samples
    win_length: int = N_FFT  # window length in samples (<= n_fft), centred in the FFT frame
    hop_length: int = HOP_LENGTH  # frame step in samples
    n_mels: int = N_MELS  # mel bins
    f_min: float = F_MIN  # Hz
    f_max: float = F_MAX  # Hz
    amin: float = AMIN  # power floor before dB
    mel_scale: str = "slaney"  # one of MEL_SCALES
    mel_norm: str = "slaney"  # one of MEL_NORMS
    pad_mode: str = "reflect"  # one of PAD_MODES
    compression: str = "db"  # one of COMPRESSIONS
    log_gain: float = 1.0  # log1p only: power multiplier inside the log
    log_divisor: float = 1.0  # log1p only: the result is divided by this
    power_gain: float = 1.0  # power multiplier (a shorter window than the tower was trained with has less energy)
    peak_normalize: bool = False  # divide each clip by its own peak |sample| first (silence is left as is)
    centered: bool = True  # frame i centred on sample i * hop (padded by pad_mode); False: window starts there, no pad
    magnitude: bool = False  # mel of |STFT| (after power_gain on the power) instead of |STFT|^2
    log_offset: float = 1e-3  # log only: ln(mel + log_offset)

    def __post_init__(self):
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"win_length {self.win_length} must be in (0, n_fft={self.n_fft}]")
        if not 0 <= self.f_min < min(self.f_max, self.sample_rate / 2):
            raise ValueError(f"need 0 <= f_min < f_max and f_min below Nyquist, got {self.f_min}, {self.f_max}")
        if self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError("hop_length and n_mels must be positive")
        for name, allowed in (
            ("mel_scale", MEL_SCALES),
            ("mel_norm", MEL_NORMS),
            ("pad_mode", PAD_MODES),
            ("compression", COMPRESSIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if min(self.log_gain, self.log_divisor, self.power_gain, self.log_offset) <= 0:
            raise ValueError("log_gain, log_divisor, power_gain and log_offset must be positive")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames that a clip of `num_samples` gives."""
        if self.centered:
            return 1 + num_samples // self.hop_length
        return 1 + (num_samples - self.win_length) // self.hop_length if num_samples >= self.win_length else 0
