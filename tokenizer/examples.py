"""Examples to look at and listen to: how a VQ-VAE hears a few utterances, and how it uses its codebook.

Train logs them for the val split when it is done, evaluate for the test split; both to the active
MLflow run, evaluate also into `<data_dir>/tokenizer/examples/`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import mlflow
import numpy as np
import torch

from tokenizer.audio_io import write_wav
from tokenizer.codec import model_input
from tokenizer.features import MelSettings, save_spectrogram_png
from tokenizer.layout import DataLayout
from tokenizer.shards import iter_utterances
from tokenizer.vocoder import make_vocoder
from tokenizer.vqvae import VQVAE


@torch.no_grad()
def log_examples(model: VQVAE, conf: Mapping[str, Any], layout: DataLayout, split: str, device: torch.device,
                 n: int = 3, artifact_dir: str = "tokenizer/examples", out_dir: Path | None = None) -> list[Path]:
    """Real-vs-reconstructed spectrogram PNGs and Griffin-Lim wavs for a few utterances, and a codebook histogram.

    Without `out_dir` they are only for MLflow: written to a temporary folder that is removed once they are
    logged (the returned paths are gone by then), so no `tokenizer-examples-*` folder outlives the call."""
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="tokenizer-examples-") as tmp:
            return log_examples(model, conf, layout, split, device, n, artifact_dir, Path(tmp))
    settings = MelSettings.from_conf(conf)
    vocoder = make_vocoder(conf["vocoder"], settings, conf["griffin_lim_iters"])
    model.eval()
    out = Path(out_dir)
    written: list[Path] = []
    counts = np.zeros(conf["codebook_size"], np.int64)
    for i, utt in enumerate(iter_utterances(layout.mels(split))):
        utt = model_input(model, utt)
        mel = torch.from_numpy(utt["mel"].astype(np.float32))[None].to(device)
        tokens = model.encode(mel)
        counts += np.bincount(tokens.cpu().numpy().ravel(), minlength=len(counts))
        if i >= n:
            continue
        recon = model.decode(tokens)[0, : mel.shape[1]].cpu().numpy()
        real_db = utt["mel"].astype(np.float32) * utt["std"] + utt["mean"]
        recon_db = recon * utt["std"] + utt["mean"]
        name = utt["utterance_id"]
        png = out / f"{name}.png"
        save_spectrogram_png(png, {"real": real_db, "reconstructed": recon_db}, settings.frames_per_second,
                             title=f"{name} ({utt['speaker']})")
        written.append(png)
        for label, db in (("real", real_db), ("reconstructed", recon_db)):
            wav = out / f"{name}.{label}.wav"
            write_wav(wav, vocoder(db), settings.sample_rate)
            written.append(wav)
    hist = out / "codebook_usage.png"
    _codebook_histogram(hist, counts, split)
    written.append(hist)
    if mlflow.active_run():
        for path in written:
            mlflow.log_artifact(str(path), artifact_dir)
    return written


def _codebook_histogram(path: Path, counts: np.ndarray, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3))
    axes[0].bar(np.arange(len(counts)), counts, width=1.0)
    axes[0].set(xlabel="code", ylabel="uses", title=f"codebook usage ({split})")
    axes[1].plot(np.sort(counts)[::-1])
    axes[1].set(xlabel="rank", ylabel="uses", yscale="symlog", title=f"{int((counts > 0).sum())} of {len(counts)} codes used")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
