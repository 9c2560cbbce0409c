"""Audio <-> tokens with one tokenizer checkpoint: how a prompt becomes token steps and how
imagined token steps become a log-mel and a waveform again.

The feature settings come from the checkpoint itself (saved by `tokenizer train`), so a prompt
at any rate or channel count goes through exactly what the tokens were made with: decode, mono,
resample, log-mel in dB, z-score with the prompt's own statistics (or, for a tokenizer trained with
`mel_norm: corpus`, the train split's, kept in the checkpoint), VQ-VAE encode. Back: VQ-VAE
decode (z-scored log-mel), z-score undone with statistics the caller chooses (a prompt's own,
or the corpus' typical level for a dream without one), the vocoder (tokenizer/vocoder.py).

`tokenize` does the same for a corpus' prepared (z-scored) utterances, many at once in batches:
the encode stage writes its tokens, the evaluate stage compares their way back with the real log-mel.
`lookahead` measures how much of the audio after step t a step-t token already holds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from tokenizer.audio_io import load_audio
from tokenizer.features import MelSettings, mel_power, power_to_db, renormalize, unzscore, voice_activity, zscore
from tokenizer.vocoder import Vocoder, make_vocoder
from tokenizer.vqvae import VQVAE, load_vqvae


@dataclass
class EncodedClip:
    """A stretch of real audio as the world model sees it, and what is needed to hear it again."""

    name: str
    tokens: np.ndarray  # int64 [P, G]: the prompt's token steps
    prompt_db: np.ndarray  # [P * ds, n_mels] log-mel (dB) of the prompt
    continuation_db: np.ndarray  # [F, n_mels] log-mel (dB) after the prompt (F may be 0)
    mean: float  # the prompt's own z-score statistics (dB)
    std: float
    notes: list[str]
    start_s: float = 0.0  # where in the file or utterance the prompt starts (its leading silence left out)


class TokenCodec:
    """A VQ-VAE checkpoint with its feature settings: waveform -> tokens -> log-mel -> waveform."""

    def __init__(self, model: VQVAE, settings: MelSettings, device: torch.device | str = "cpu",
                 vocoder: str = "griffinlim", griffin_lim_iters: int = 32):
        self.model, self.settings, self.device = model.eval(), settings, torch.device(device)
        self.vocoder: Vocoder = make_vocoder(vocoder, settings, griffin_lim_iters, self.device)

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu", fallback: MelSettings | None = None,
             vocoder: str = "griffinlim", griffin_lim_iters: int = 32) -> "TokenCodec":
        """The checkpoint's own feature settings (`fallback`, e.g. the run's config, only when it has none)."""
        model, extra = load_vqvae(path, device)
        features = extra.get("features")
        settings = MelSettings(**features) if features else fallback
        if settings is None:
            raise ValueError(f"{path}: the tokenizer checkpoint records no feature settings")
        return cls(model, settings, device, vocoder, griffin_lim_iters)

    @property
    def frames_per_step(self) -> int:
        return self.model.ds

    @property
    def steps_per_second(self) -> float:
        return self.settings.frames_per_second / self.model.ds

    @property
    def samples_per_step(self) -> int:
        return self.model.ds * self.settings.hop_length

    def steps_for(self, seconds: float) -> int:
        """Token steps whose audio covers `seconds` in full (one step more than the ceiling:
        the last frame's samples are only half made)."""
        return math.ceil(seconds * self.steps_per_second - 1e-9) + 1

    # ---- audio -> tokens ----------------------------------------------------------------
    def wave_to_db(self, wave: np.ndarray) -> np.ndarray:
        return power_to_db(mel_power(wave, self.settings), self.settings.top_db)

    @torch.no_grad()
    def encode_db(self, db: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Log-mel (dB) [F, n_mels] -> (tokens [ceil(F / ds), G], mean, std) with its own z-score
        (the tokenizer's corpus statistics when it has them: then no later frame moves an earlier token)."""
        z, mean, std = normalize_db(self.model, db)
        tokens = self.model.encode(torch.from_numpy(z)[None].to(self.device))[0]
        return tokens.cpu().numpy().astype(np.int64), mean, std

    def encode_prompt(self, name: str, db: np.ndarray, prompt_seconds: float,
                      notes: list[str] | None = None, vad_db: float | None = None) -> EncodedClip:
        """The first `prompt_seconds` (whole steps) of a log-mel as a prompt; the rest is its true continuation.

        With `vad_db` (the corpus' voice-activity threshold), the prompt starts at the step holding the
        first voiced frame: a prompt of leading silence would ask the model to continue silence.
        """
        notes = list(notes or [])
        ds = self.frames_per_step
        start = first_voiced_step(db, vad_db, ds) * ds if vad_db is not None else 0
        start_s = start / self.settings.frames_per_second
        if start:
            notes.append(f"leading silence trimmed: the prompt starts at {start_s:.2f} s")
            db = db[start:]
        available = len(db) // ds
        if available < 1:
            raise ValueError(f"{name}: shorter than one token step ({ds / self.settings.frames_per_second:.2f} s)")
        steps = max(1, round(prompt_seconds * self.steps_per_second))
        if steps > available:
            notes.append(f"prompt shorter than {prompt_seconds:g} s: uses its {available / self.steps_per_second:.2f} s")
            steps = available
        prompt_db = np.asarray(db[:steps * ds], np.float32)
        tokens, mean, std = self.encode_db(prompt_db)
        return EncodedClip(name, tokens, prompt_db, np.asarray(db[steps * ds:], np.float32), mean, std, notes, start_s)

    def load_prompt(self, path: Path | str, prompt_seconds: float, max_seconds: float = 60.0,
                    silence_db: float = -60.0, vad_db: float | None = None) -> EncodedClip:
        """Any audio file (wav/flac/ogg/mp3, any rate and channels) as a prompt (from its first voiced step with
        `vad_db`); raises UnusableAudio."""
        wave, notes = load_audio(path, self.settings.sample_rate, max_seconds, "cut", silence_db)
        return self.encode_prompt(Path(path).name, self.wave_to_db(wave), prompt_seconds, notes, vad_db)

    # ---- tokens -> audio ----------------------------------------------------------------
    @torch.no_grad()
    def decode(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """Token steps [S, T, G] (or [T, G]) -> z-scored log-mel [S, T * ds, n_mels] (or [T * ds, n_mels])."""
        t = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=self.device)
        single = t.dim() == 2
        z = self.model.decode(t[None] if single else t).float().cpu().numpy()
        return z[0] if single else z

    def roundtrip(self, db: np.ndarray) -> np.ndarray:
        """A real log-mel (dB) through the tokenizer and back, at its own level: what perfect tokens sound like."""
        tokens, mean, std = self.encode_db(db)
        return self.to_db(self.decode(tokens)[:len(db)], mean, std)

    @staticmethod
    def to_db(z: np.ndarray, mean: float, std: float) -> np.ndarray:
        return unzscore(z, mean, std).astype(np.float32)

    def to_wave(self, db: np.ndarray, samples: int | None = None) -> np.ndarray:
        """Log-mel (dB) -> waveform through the codec's vocoder, cut or zero-padded to `samples`."""
        return self.vocoder(db, samples)


def first_voiced_step(db: np.ndarray, vad_db: float, frames_per_step: int) -> int:
    """The token step holding the first frame within `vad_db` dB of the loudest (the corpus' voice activity);
    0 when no frame is (nothing to trim)."""
    voiced = np.flatnonzero(voice_activity(np.asarray(db, np.float32), vad_db)) if len(db) else []
    return int(voiced[0]) // frames_per_step if len(voiced) else 0


def normalize_db(model: VQVAE, db: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A log-mel (dB) z-scored as `model` takes it: (z, mean, std); the model's corpus statistics, else the clip's own."""
    if model.norm_stats is None:
        return zscore(np.asarray(db, np.float32))
    mean, std = model.norm_stats
    return ((np.asarray(db, np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32), mean, std


def model_input(model: VQVAE, utt: dict) -> dict:
    """A prepared utterance as `model` takes it: unchanged, or (norm_stats) re-z-scored with the corpus
    statistics, its `mean` and `std` then the corpus' (so un-z-scoring its mel or its reconstruction still gives dB)."""
    if model.norm_stats is None:
        return utt
    mean, std = model.norm_stats
    return {**utt, "mel": renormalize(utt["mel"], utt["mean"], utt["std"], model.norm_stats), "mean": mean, "std": std}


# ---- a corpus' z-scored utterances, many at once (the encode and evaluate stages) ----------------

def _batches(utterances: Iterable[dict], max_frames: int) -> Iterator[list[dict]]:
    """Group utterances (sorted by length within a window) so padding wastes little compute."""
    window: list[dict] = []

    def flush() -> Iterator[list[dict]]:
        window.sort(key=lambda u: len(u["mel"]))
        batch: list[dict] = []
        for u in window:
            if batch and (len(batch) + 1) * len(u["mel"]) > max_frames:
                yield batch
                batch = []
            batch.append(u)
        if batch:
            yield batch
        window.clear()

    for u in utterances:
        window.append(u)
        if len(window) >= 256:
            yield from flush()
    yield from flush()


@torch.no_grad()
def tokenize(model: VQVAE, utterances: Iterable[dict], device: torch.device, max_frames: int = 20000,
             reconstruct: bool = False) -> Iterator[tuple[dict, np.ndarray, np.ndarray | None]]:
    """(utterance, tokens [ceil(F / ds), G], reconstructed z-scored mel [F, n_mels] or None), batched.

    The same clip gets the same tokens whatever batch it lands in: frames are edge-padded
    (a clip's last step repeats its last frame, as alone) and masked past each clip's end.
    A tokenizer with corpus statistics gets (and yields) utterances through `model_input`.
    """
    model.eval()
    for batch in _batches((model_input(model, u) for u in utterances), max_frames):
        longest = max(len(u["mel"]) for u in batch)
        mel = np.stack([np.pad(u["mel"].astype(np.float32), ((0, longest - len(u["mel"])), (0, 0)), mode="edge")
                        for u in batch])
        lengths = torch.tensor([len(u["mel"]) for u in batch], device=device)
        tokens = model.encode(torch.from_numpy(mel).to(device), lengths)  # padding never reaches a clip's tokens
        recon = model.decode(tokens, lengths).float().cpu().numpy() if reconstruct else None
        tokens = tokens.cpu().numpy()
        for i, u in enumerate(batch):
            n = len(u["mel"])
            steps = -(-n // model.ds)
            yield u, tokens[i, :steps], (recon[i, :n] if recon is not None else None)


# ---- what a step-t token knows of the future ----------------------------------------------------

def _tail(other: np.ndarray, frames: int) -> np.ndarray:
    return np.take(other, np.arange(frames) % len(other), axis=0)


def _future_swaps(model: VQVAE, db: np.ndarray, other: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """[1 + 2 * len(cuts), F, n_mels]: the clip as the model takes it, then per cut step t the frames after
    step t swapped for `other`'s (1) after z-scoring, (2) in dB before z-scoring (what normalisation leaks)."""
    ds, z = model.ds, normalize_db(model, db)[0]
    zo = normalize_db(model, other)[0]
    enc = [np.concatenate([z[:(t + 1) * ds], _tail(zo, len(z) - (t + 1) * ds)]) for t in cuts]
    norm = [normalize_db(model, np.concatenate([db[:(t + 1) * ds], _tail(other, len(db) - (t + 1) * ds)]))[0]
            for t in cuts]
    return np.stack([z, *enc, *norm]).astype(np.float32)


@torch.no_grad()
def receptive_field(model: VQVAE, window_steps: int = 16, seed: int = 0) -> tuple[int, int]:
    """(steps, frames): how far after step t's end a single frame can lie and still move step t's latent.

    Each frame of the middle third of a random 3 x `window_steps` clip is perturbed alone; exact for any
    lookahead under `window_steps` (the architecture's, whatever the weights). 0 for a causal encoder."""
    ds, g = model.ds, torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3 * window_steps * ds, model.n_mels, generator=g)
    frames = torch.arange(window_steps * ds, 2 * window_steps * ds)
    batch = x.repeat(len(frames) + 1, 1, 1)
    batch[torch.arange(1, len(frames) + 1), frames] += 3.0
    h = model.eval()._latents(batch)
    moved = (h[1:] - h[:1]).abs().flatten(2).amax(2) > 1e-5 * float(h.abs().max())  # [frames, steps]
    first = torch.where(moved.any(1), moved.float().argmax(1), frames // ds)
    steps = int((frames // ds - first).max().clamp_min(0))
    past_end = int((frames - ((first + 1) * ds - 1)).max().clamp_min(0))
    return steps, past_end


@torch.no_grad()
def lookahead(model: VQVAE, dbs: Sequence[np.ndarray], cuts: int = 16, seed: int = 0) -> dict[str, float]:
    """How much of the audio after step t a step-t token holds, for a trained tokenizer and real clips (dB).

    `changed`: the fraction of step-t tokens that change when every frame after step t is swapped for
    another clip's (the encoder's own lookahead: 0 for a causal one); `changed_with_norm`: the same with the
    swap made in dB before z-scoring (mel_norm utterance adds the clip's new overall level; corpus adds
    nothing); `changed_far`: with that swap, the fraction of tokens of steps beyond the encoder's reach
    (before t - receptive_steps) that change: the normalisation's leak alone; `receptive_steps` /
    `receptive_frames`: see receptive_field. `cuts` steps t per clip, seeded.
    """
    model.eval()
    rng = np.random.default_rng(seed)
    rf_steps, rf_frames = receptive_field(model, seed=seed)
    ds, sums, pairs, far, far_n = model.ds, np.zeros(2), 0, 0.0, 0
    for i, db in enumerate(dbs):
        steps = -(-len(db) // ds)
        if steps < 2 or len(dbs) < 2:
            continue
        at = np.sort(rng.choice(steps - 1, min(cuts, steps - 1), replace=False))
        other = np.asarray(dbs[(i + 1) % len(dbs)], np.float32)
        batch = torch.from_numpy(_future_swaps(model, np.asarray(db, np.float32), other, at))
        tokens = model.encode(batch.to(next(model.parameters()).device)).cpu()
        k, base = len(at), tokens[0]
        for j, part in enumerate((tokens[1:1 + k], tokens[1 + k:])):
            sums[j] += float((part[torch.arange(k), at] != base[at]).float().mean()) * k
        for row, t in zip(tokens[1 + k:], at):
            reach = max(0, int(t) - rf_steps)
            far += float((row[:reach] != base[:reach]).float().sum())
            far_n += reach * model.G
        pairs += k
    return {"changed": float(sums[0]) / max(pairs, 1), "changed_with_norm": float(sums[1]) / max(pairs, 1),
            "changed_far": far / max(far_n, 1), "receptive_steps": rf_steps, "receptive_frames": rf_frames,
            "pairs": pairs, "causal": bool(model.causal),
            "mel_norm": "utterance" if model.norm_stats is None else "corpus"}
