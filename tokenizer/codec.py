"""Audio <-> tokens with one tokenizer checkpoint: how a prompt becomes token steps and how
imagined token steps become a log-mel and a waveform again.

The feature settings come from the checkpoint itself (saved by `tokenizer train`), so a prompt
at any rate or channel count goes through exactly what the tokens were made with: decode, mono,
resample, log-mel in dB, z-score with the prompt's own statistics, VQ-VAE encode. Back: VQ-VAE
decode (z-scored log-mel), z-score undone with statistics the caller chooses (a prompt's own,
or the corpus' typical level for a dream without one), inverse mel + Griffin-Lim.

`tokenize` does the same for a corpus' prepared (z-scored) utterances, many at once in batches:
the encode stage writes its tokens, the evaluate stage compares their way back with the real log-mel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from tokenizer.audio_io import load_audio
from tokenizer.features import MelSettings, mel_db_to_audio, mel_power, power_to_db, unzscore, zscore
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


class TokenCodec:
    """A VQ-VAE checkpoint with its feature settings: waveform -> tokens -> log-mel -> waveform."""

    def __init__(self, model: VQVAE, settings: MelSettings, device: torch.device | str = "cpu",
                 griffin_lim_iters: int = 32):
        self.model, self.settings, self.device = model.eval(), settings, torch.device(device)
        self.griffin_lim_iters = int(griffin_lim_iters)

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu", fallback: MelSettings | None = None,
             griffin_lim_iters: int = 32) -> "TokenCodec":
        """The checkpoint's own feature settings (`fallback`, e.g. the run's config, only when it has none)."""
        model, extra = load_vqvae(path, device)
        features = extra.get("features")
        settings = MelSettings(**features) if features else fallback
        if settings is None:
            raise ValueError(f"{path}: the tokenizer checkpoint records no feature settings")
        return cls(model, settings, device, griffin_lim_iters)

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
        """Token steps whose Griffin-Lim audio covers `seconds` in full (one step more than the ceiling:
        the last frame's samples are only half made)."""
        return math.ceil(seconds * self.steps_per_second - 1e-9) + 1

    # ---- audio -> tokens ----------------------------------------------------------------
    def wave_to_db(self, wave: np.ndarray) -> np.ndarray:
        return power_to_db(mel_power(wave, self.settings), self.settings.top_db)

    @torch.no_grad()
    def encode_db(self, db: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Log-mel (dB) [F, n_mels] -> (tokens [ceil(F / ds), G], mean, std) with its own z-score."""
        z, mean, std = zscore(np.asarray(db, np.float32))
        tokens = self.model.encode(torch.from_numpy(z)[None].to(self.device))[0]
        return tokens.cpu().numpy().astype(np.int64), mean, std

    def encode_prompt(self, name: str, db: np.ndarray, prompt_seconds: float,
                      notes: list[str] | None = None) -> EncodedClip:
        """The first `prompt_seconds` (whole steps) of a log-mel as a prompt; the rest is its true continuation."""
        notes = list(notes or [])
        ds = self.frames_per_step
        available = len(db) // ds
        if available < 1:
            raise ValueError(f"{name}: shorter than one token step ({ds / self.settings.frames_per_second:.2f} s)")
        steps = max(1, round(prompt_seconds * self.steps_per_second))
        if steps > available:
            notes.append(f"prompt shorter than {prompt_seconds:g} s: uses its {available / self.steps_per_second:.2f} s")
            steps = available
        prompt_db = np.asarray(db[:steps * ds], np.float32)
        tokens, mean, std = self.encode_db(prompt_db)
        return EncodedClip(name, tokens, prompt_db, np.asarray(db[steps * ds:], np.float32), mean, std, notes)

    def load_prompt(self, path: Path | str, prompt_seconds: float, max_seconds: float = 60.0,
                    silence_db: float = -60.0) -> EncodedClip:
        """Any audio file (wav/flac/ogg/mp3, any rate and channels) as a prompt; raises UnusableAudio."""
        wave, notes = load_audio(path, self.settings.sample_rate, max_seconds, "cut", silence_db)
        return self.encode_prompt(Path(path).name, self.wave_to_db(wave), prompt_seconds, notes)

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
        """Log-mel (dB) -> waveform (inverse mel + Griffin-Lim), cut or zero-padded to `samples`."""
        wave = mel_db_to_audio(db, self.settings, self.griffin_lim_iters).astype(np.float32)
        if samples is not None:
            wave = np.pad(wave[:samples], (0, max(0, samples - len(wave))))
        return wave


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
    """
    model.eval()
    for batch in _batches(utterances, max_frames):
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
