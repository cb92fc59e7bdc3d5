"""Log-mel front end of the keyword-spotting example, in plain numpy.

The hardware runs only the recurrent network; the front end stays in software.
It is written here with numpy alone (no librosa/torchaudio) so that the dataset
generator, the training script and any later evaluation of a compiled model
compute bit-identical features from the same waveform, whatever packages are
installed.  Everything is a pure function of its input: no random state, no
caching that could change results.

Parameters (16 kHz audio, 1 s clips):
  30 ms Hann window (480 samples) zero-padded to a 512-point FFT,
  20 ms hop (320 samples)             -> 49 frames per 1 s clip,
  40 triangular mel filters (HTK mel scale) from 20 Hz to 8000 Hz,
  natural log of the filter energies plus 1e-6 (so silence stays finite).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE
WIN_LENGTH = 480
HOP_LENGTH = 320
N_FFT = 512
N_MELS = 40
F_MIN = 20.0
F_MAX = 8000.0
LOG_FLOOR = 1e-6
N_FRAMES = 1 + (CLIP_SAMPLES - WIN_LENGTH) // HOP_LENGTH


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale; chosen because it is the one-line formula most readers know."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> np.ndarray:
    """Triangular filters on the mel scale, shape [n_fft // 2 + 1, n_mels].

    Filters are evaluated at the exact FFT bin frequencies (not snapped to
    bins), so even the narrow low filters never come out empty.
    """
    bin_hz = np.arange(n_fft // 2 + 1, dtype=np.float64) * sample_rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_hz[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - bin_hz[:, None]) / (upper - centre)[None, :]
    return np.clip(np.minimum(rising, falling), 0.0, None)


_WINDOW = np.hanning(WIN_LENGTH + 1)[:-1]  # periodic Hann, the usual STFT choice
_MEL = mel_filterbank()


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Log-mel features of one clip or a batch of clips.

    audio: float waveform(s) at 16 kHz in [-1, 1], shape [S] or [N, S].
    Returns float32 of shape [frames, 40] or [N, frames, 40]; a 1 s clip gives
    49 frames.  Frames are taken without padding so that every frame sees only
    real samples (the recurrent network needs no artificial edge frames).
    """
    x = np.asarray(audio, dtype=np.float64)
    single = x.ndim == 1
    if single:
        x = x[None, :]
    n_frames = 1 + (x.shape[1] - WIN_LENGTH) // HOP_LENGTH
    starts = np.arange(n_frames) * HOP_LENGTH
    frames = x[:, starts[:, None] + np.arange(WIN_LENGTH)[None, :]] * _WINDOW
    power = np.abs(np.fft.rfft(frames, n=N_FFT, axis=-1)) ** 2
    feats = np.log(power @ _MEL + LOG_FLOOR).astype(np.float32)
    return feats[0] if single else feats
