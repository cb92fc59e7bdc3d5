"""Synthesize a 12-class keyword-spotting dataset with espeak-ng.

Google Speech Commands (the data set of the paper's keyword-spotting task)
cannot be downloaded here, so this script builds a stand-in with the same
12 classes: the ten keywords, "silence" (background noise only) and "unknown"
(twenty other words).  A *speaker* is one espeak-ng accent combined with one
voice variant (e.g. ``en-gb-scotland+f3``); speakers are split into
train/validation/test so that the test set only holds voices never heard in
training, as Speech Commands splits by speaker.

Each utterance is synthesized at a random speed and pitch, resampled to
16 kHz, trimmed, placed at a random offset in a 1 s clip with a small random
gain, and mixed with synthetic background noise (white/pink/brown/random
spectral slope, mixtures, mains hum, slow amplitude modulation) at a random
SNR.  Features come from :func:`features.log_mel` (40 log-mel x 49 frames).

Writes ``train.npz``, ``val.npz``, ``test.npz`` and ``stats.json`` to --out
(default data/kws, outside the repository) and the small checked-in
evaluation set ``eval_set.npz`` plus ``classes.txt`` next to this script.

Run from the repository root:  python examples/kws/make_dataset.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np

from features import CLIP_SAMPLES, N_FRAMES, N_MELS, SAMPLE_RATE, log_mel

HERE = Path(__file__).resolve().parent

KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
CLASSES = KEYWORDS + ["silence", "unknown"]
SILENCE = CLASSES.index("silence")
UNKNOWN = CLASSES.index("unknown")
UNKNOWN_WORDS = [
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero",
]

# espeak-ng's own English accents (the mbrola ones need extra non-free data).
ACCENTS = [
    "en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
    "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
]
# Voice variants shipped with espeak-ng 1.51, minus the deliberately robotic or
# effect voices (robosoft*, Demonic, UniRobot, anikaRobot, announcer, fast,
# RicishayMax*) which sound like no human speaker.
VARIANTS = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo",
    "Gene", "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario",
    "Michael", "Mike", "Nguyen", "Storm", "Tweaky", "adam", "anika", "antonio",
    "aunty", "belinda", "benjamin", "boris", "caleb", "croak", "david", "ed",
    "edward", "edward2", "grandma", "grandpa", "gustave", "iven", "iven2",
    "iven3", "iven4", "john", "kaukovalta", "klatt", "klatt2", "klatt3",
    "klatt4", "klatt5", "klatt6", "linda", "marcelo", "max", "michel", "miguel",
    "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro",
    "shelby", "steph", "steph2", "steph3", "travis", "victor", "whisper",
    "whisperf",
]

RENDITIONS_PER_KEYWORD = 2   # per speaker, each at its own speed and pitch
UNKNOWN_PER_SPEAKER = 3      # distinct unknown words per speaker
SILENCE_PER_SPEAKER = 2
SPEED_WPM = (120, 220)       # espeak-ng -s range
PITCH = (20, 80)             # espeak-ng -p range (0-99, default 50)
SPEECH_DBFS = (-28.0, -16.0) # RMS level of the active speech: the "small gain change"
SNR_DB = (5.0, 30.0)
SILENCE_DBFS = (-60.0, -25.0)


def require_espeak() -> None:
    """Fail early with the install command rather than deep inside a worker."""
    if shutil.which("espeak-ng") is None:
        sys.exit(
            "espeak-ng not found. Install it (Debian/Ubuntu, as root):\n"
            "    apt-get update && apt-get install -y espeak-ng"
        )


def speak(word: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """One word from espeak-ng as (float64 samples, sample rate), 22050 Hz in practice.

    espeak-ng streams its WAV to stdout with placeholder chunk sizes, so the
    samples are simply everything after the ``data`` chunk header.
    """
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
        check=True, capture_output=True,
    ).stdout
    start = wav.index(b"data") + 8
    body = wav[start : start + (len(wav) - start) // 2 * 2]
    rate = int.from_bytes(wav[24:28], "little")
    return np.frombuffer(body, dtype="<i2").astype(np.float64) / 32768.0, rate


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling by truncating the spectrum.

    Exact for a clip padded with silence, which espeak-ng output is; avoids a
    scipy dependency.
    """
    n_out = int(round(len(x) * dst / src))
    spec = np.fft.rfft(x)[: n_out // 2 + 1]
    return np.fft.irfft(spec, n=n_out) * (n_out / len(x))


def trim(x: np.ndarray, rel_threshold: float = 0.03, margin: int = 800) -> np.ndarray:
    """Cut leading/trailing silence (10 ms frames below 3 % of the peak RMS)."""
    frame = SAMPLE_RATE // 100
    n = len(x) // frame
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))
    active = np.flatnonzero(rms > rel_threshold * rms.max())
    lo = max(active[0] * frame - margin, 0)
    hi = min((active[-1] + 1) * frame + margin, len(x))
    return x[lo:hi]


def colored_noise(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**alpha (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spec / f ** (alpha / 2.0), n=n)
    return y / np.sqrt(np.mean(y**2))


def background(rng: np.random.Generator, n: int) -> np.ndarray:
    """One background-noise clip at unit RMS, drawn from a few families.

    The families stand in for the real recordings of Speech Commands: pure
    white, pink or brown noise, or a random mixture of 2-3 noises of random
    spectral slope, optionally with mains hum and slow amplitude modulation
    (so that "silence" is not always stationary).
    """
    kind = rng.integers(4)
    if kind < 3:
        y = colored_noise(rng, n, float(kind))
    else:
        parts = [colored_noise(rng, n, rng.uniform(0.0, 2.0)) for _ in range(rng.integers(2, 4))]
        y = sum(w * p for w, p in zip(rng.dirichlet(np.ones(len(parts))), parts, strict=True))
        t = np.arange(n) / SAMPLE_RATE
        if rng.random() < 0.3:
            mains = rng.choice([50.0, 60.0])
            hum = sum(np.sin(2 * np.pi * k * mains * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 5))
            y = y + rng.uniform(0.2, 1.0) * hum / np.sqrt(np.mean(hum**2))
        if rng.random() < 0.3:
            y = y * (1.0 + rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * rng.uniform(0.5, 4.0) * t + rng.uniform(0, 2 * np.pi)))
    return y / np.sqrt(np.mean(y**2))


def place(rng: np.random.Generator, speech: np.ndarray) -> np.ndarray:
    """Put a trimmed utterance at a random offset of a 1 s clip with noise at a random SNR."""
    speech = speech[:CLIP_SAMPLES]
    level = 10.0 ** (rng.uniform(*SPEECH_DBFS) / 20.0)
    speech = speech * level / np.sqrt(np.mean(speech**2))
    clip = np.zeros(CLIP_SAMPLES)
    offset = rng.integers(0, CLIP_SAMPLES - len(speech) + 1)
    clip[offset : offset + len(speech)] = speech
    snr = rng.uniform(*SNR_DB)
    clip += background(rng, CLIP_SAMPLES) * level / 10.0 ** (snr / 20.0)
    return np.clip(clip, -1.0, 1.0)


def silence_clip(rng: np.random.Generator) -> np.ndarray:
    """A noise-only clip at a random level (class "silence")."""
    return background(rng, CLIP_SAMPLES) * 10.0 ** (rng.uniform(*SILENCE_DBFS) / 20.0)


def speaker_clips(job: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """All clips of one speaker as (features [N, 49, 40] float32, labels [N] int64).

    The random stream depends only on (seed, speaker index), so the data set
    is identical whatever the number of worker processes.  ``copies`` > 1
    renders each utterance several times with fresh offset/gain/noise (used to
    enlarge the training split cheaply: synthesis is the slow part).
    """
    seed, speaker, copies = job
    rng = np.random.default_rng([seed, speaker])
    voice = f"{ACCENTS[speaker // len(VARIANTS)]}+{VARIANTS[speaker % len(VARIANTS)]}"
    utterances: list[tuple[str, int]] = [(w, c) for c, w in enumerate(KEYWORDS) for _ in range(RENDITIONS_PER_KEYWORD)]
    utterances += [(str(w), UNKNOWN) for w in rng.choice(UNKNOWN_WORDS, UNKNOWN_PER_SPEAKER, replace=False)]
    clips: list[np.ndarray] = []
    labels: list[int] = []
    for word, label in utterances:
        speed, pitch = int(rng.integers(*SPEED_WPM, endpoint=True)), int(rng.integers(*PITCH, endpoint=True))
        samples, rate = speak(word, voice, speed, pitch)
        speech = trim(resample(samples, rate, SAMPLE_RATE))
        for _ in range(copies):
            clips.append(place(rng, speech))
            labels.append(label)
    for _ in range(SILENCE_PER_SPEAKER * copies):
        clips.append(silence_clip(rng))
        labels.append(SILENCE)
    return log_mel(np.stack(clips)), np.asarray(labels, dtype=np.int64)


def split_speakers(n_speakers: int, seed: int, val_frac: float, test_frac: float) -> dict[str, np.ndarray]:
    """Seeded random partition of speaker indices into train/val/test."""
    order = np.random.default_rng(seed).permutation(n_speakers)
    n_test, n_val = round(n_speakers * test_frac), round(n_speakers * val_frac)
    return {
        "test": np.sort(order[:n_test]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }


def build_split(pool: Pool, seed: int, speakers: np.ndarray, copies: int) -> dict[str, np.ndarray]:
    """Features, labels and speaker ids of one split, in speaker order."""
    jobs = [(seed, int(s), copies) for s in speakers]
    xs, ys, ss = [], [], []
    for (x, y), s in zip(pool.imap(speaker_clips, jobs, chunksize=4), speakers, strict=True):
        xs.append(x)
        ys.append(y)
        ss.append(np.full(len(y), s, dtype=np.int32))
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "speaker": np.concatenate(ss)}


def balanced_subset(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` random examples of every class, sorted."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(len(CLASSES))]
    return np.sort(np.concatenate(picks))


def main() -> None:
    """Generate the splits, the checked-in eval set and the statistics."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/kws"))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--train-copies", type=int, default=2, help="noisy renderings per training utterance")
    parser.add_argument("--eval-per-class", type=int, default=50, help="clips per class in eval_set.npz")
    args = parser.parse_args()
    require_espeak()
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    splits = split_speakers(len(ACCENTS) * len(VARIANTS), args.seed, val_frac=0.1, test_frac=0.1)
    stats: dict[str, object] = {"classes": CLASSES, "frames": N_FRAMES, "mels": N_MELS, "seed": args.seed}
    with Pool(args.jobs) as pool:
        for name, speakers in splits.items():
            data = build_split(pool, args.seed, speakers, args.train_copies if name == "train" else 1)
            np.savez(args.out / f"{name}.npz", **data)
            stats[name] = {
                "speakers": [f"{ACCENTS[s // len(VARIANTS)]}+{VARIANTS[s % len(VARIANTS)]}" for s in speakers],
                "clips": int(len(data["y"])),
                "per_class": np.bincount(data["y"], minlength=len(CLASSES)).tolist(),
            }
            print(f"{name}: {len(speakers)} speakers, {len(data['y'])} clips", flush=True)
            if name == "test":
                pick = balanced_subset(data["y"], args.eval_per_class, args.seed)
                np.savez_compressed(
                    HERE / "eval_set.npz",
                    features=np.ascontiguousarray(data["x"][pick].transpose(1, 0, 2)),  # the model input name
                    y=data["y"][pick],
                )
    stats["seconds"] = round(time.time() - started, 1)
    (args.out / "stats.json").write_text(json.dumps(stats, indent=1))
    (HERE / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    print(f"done in {stats['seconds']} s -> {args.out}")


if __name__ == "__main__":
    main()
