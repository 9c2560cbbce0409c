"""Latent features of utterances and their t-SNE picture: does the model's state separate speakers and languages?"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pydreamer.models import Dreamer


@torch.no_grad()
def latent_points(model: Dreamer, utterances: list[np.ndarray], device: torch.device, per_utterance: int = 20,
                  seed: int = 0) -> np.ndarray:
    """The world model's step features (`WorldModel.step_features`) of a few seeded steps of each utterance."""
    rng = np.random.default_rng(seed)
    out = []
    for tokens in utterances:
        feats = model.wm.step_features(torch.from_numpy(tokens).to(device))
        T = len(tokens)
        pick = rng.choice(T, min(per_utterance, T), replace=False)
        out.append(feats[torch.from_numpy(pick).to(device)].float().cpu().numpy())
    return np.concatenate(out)


def tsne_png(path: Path, points: np.ndarray, labels: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    xy = TSNE(n_components=2, perplexity=min(30.0, max(2.0, len(points) / 4)), init="pca",
              random_state=0).fit_transform(points)
    language = [lab.split("+")[0] for lab in labels]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, keys, what in ((axes[0], labels, "speaker"), (axes[1], language, "language")):
        for k in sorted(set(keys)):
            m = np.array([x == k for x in keys])
            ax.scatter(xy[m, 0], xy[m, 1], s=6, label=k)
        ax.set_title(f"coloured by {what}")
        if len(set(keys)) <= 12:
            ax.legend(markerscale=2, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
