"""The VQ-VAE that turns a log-mel spectrogram into a sequence of token steps and back.

Time is downsampled `time_downsample` times by strided convolutions; each step is
`tokens_per_step` (G) vectors quantized with one shared codebook, so a step is G tokens
of log2(codebook_size) bits each. The codebook is kept alive by EMA updates and by
restarting codes that fall out of use (a collapsed codebook wastes bits).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from runtime.files import atomic_path


class VectorQuantizer(nn.Module):
    """Nearest-code quantization with a straight-through gradient.

    With `ema`, codes move to the running mean of the vectors assigned to them. Usage is
    counted over windows of `restart_window` training batches; at the end of each window,
    codes used less than `dead_threshold` x the average are restarted on random vectors of
    the current batch, so a collapsed codebook recovers within a few dozen steps.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, ema: bool = True,
                 decay: float = 0.99, dead_threshold: float = 0.1, eps: float = 1e-5, restart_window: int = 20):
        super().__init__()
        self.codebook_size, self.dim, self.beta = codebook_size, dim, beta
        self.ema, self.decay, self.dead_threshold, self.eps = ema, decay, dead_threshold, eps
        self.restart_window = restart_window
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim) * 0.1, requires_grad=not ema)
        self.register_buffer("ema_count", torch.zeros(codebook_size))
        self.register_buffer("ema_sum", self.codebook.data.clone())
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("window_counts", torch.zeros(codebook_size))
        self.window_batches = 0
        self.restarts = 0

    def nearest(self, z: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Index of the nearest code for each row of z [N, D].

        ||z||^2 is the same for every code, so argmin(||e||^2 - 2 z.e) suffices; rows go in
        chunks so the [rows, codebook] distance matrix stays small (encode speed).
        """
        cb = self.codebook.detach().float()
        cb_sq = cb.pow(2).sum(1)
        z = z.float()
        return torch.cat([torch.addmm(cb_sq, part, cb.T, alpha=-2.0).argmin(1) for part in z.split(chunk)])

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.codebook)

    @torch.no_grad()
    def _init_from(self, z: torch.Tensor) -> None:
        pick = z[torch.randint(len(z), (self.codebook_size,), device=z.device)]
        self.codebook.data.copy_(pick)
        self.ema_count.fill_(len(z) / self.codebook_size)
        self.ema_sum.copy_(pick * self.ema_count[:, None])  # a sum, so that sum / count is the code
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.codebook_size).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, z)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.data.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def _restart_dead(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        self.window_counts += torch.bincount(idx, minlength=self.codebook_size).float()
        self.window_batches += 1
        if self.window_batches < self.restart_window:
            return
        dead = self.window_counts < self.dead_threshold * self.window_counts.sum() / self.codebook_size
        self.window_counts.zero_()
        self.window_batches = 0
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        pick = z[torch.randint(len(z), (n_dead,), device=z.device)]
        pick = pick + 0.01 * pick.std() * torch.randn_like(pick)
        self.codebook.data[dead] = pick
        self.ema_count[dead] = len(z) / self.codebook_size
        self.ema_sum[dead] = pick * self.ema_count[dead][:, None]
        self.restarts += n_dead

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z [..., D] -> (quantized with straight-through gradient, indices [...], losses)."""
        shape = z.shape
        flat = z.reshape(-1, self.dim)
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach().float())
        idx = self.nearest(flat.detach())
        q = self.lookup(idx)
        losses = {"commitment": F.mse_loss(flat, q.detach())}
        if not self.ema:
            losses["codebook"] = F.mse_loss(q, flat.detach())
        if self.training:
            if self.ema:
                self._ema_update(flat.detach().float(), idx)
            self._restart_dead(flat.detach().float(), idx)
        q_st = flat + (q - flat).detach()
        return q_st.reshape(shape), idx.reshape(shape[:-1]), losses


class ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.GELU(), nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation),
            nn.GELU(), nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def _res_stack(channels: int, n: int) -> list[nn.Module]:
    return [ResBlock(channels, dilation=3 ** (i % 3)) for i in range(n)]


class VQVAE(nn.Module):
    def __init__(self, n_mels: int = 80, channels: int = 192, code_dim: int = 64, codebook_size: int = 1024,
                 tokens_per_step: int = 4, time_downsample: int = 4, res_blocks: int = 2, beta: float = 0.25,
                 ema: bool = True, ema_decay: float = 0.99, dead_threshold: float = 0.1):
        super().__init__()
        if time_downsample < 1 or time_downsample & (time_downsample - 1):
            raise ValueError(f"time_downsample must be a power of two (1, 2, 4, 8, ...), got {time_downsample}")
        self.hparams = dict(n_mels=n_mels, channels=channels, code_dim=code_dim, codebook_size=codebook_size,
                            tokens_per_step=tokens_per_step, time_downsample=time_downsample, res_blocks=res_blocks,
                            beta=beta, ema=ema, ema_decay=ema_decay, dead_threshold=dead_threshold)
        self.n_mels, self.G, self.D, self.ds = n_mels, tokens_per_step, code_dim, time_downsample
        n_down = int(math.log2(time_downsample))
        enc: list[nn.Module] = [nn.Conv1d(n_mels, channels, 3, padding=1), *_res_stack(channels, res_blocks)]
        for _ in range(n_down):
            enc += [nn.GELU(), nn.Conv1d(channels, channels, 4, stride=2, padding=1), *_res_stack(channels, res_blocks)]
        enc += [nn.GELU(), nn.Conv1d(channels, tokens_per_step * code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv1d(tokens_per_step * code_dim, channels, 3, padding=1), *_res_stack(channels, res_blocks)]
        for _ in range(n_down):
            dec += [nn.GELU(), nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1), *_res_stack(channels, res_blocks)]
        dec += [nn.GELU(), nn.Conv1d(channels, n_mels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.quantizer = VectorQuantizer(codebook_size, code_dim, beta, ema, ema_decay, dead_threshold)

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> "VQVAE":
        return cls(n_mels=conf["n_mels"], channels=conf["vq_channels"], code_dim=conf["vq_code_dim"],
                   codebook_size=conf["codebook_size"], tokens_per_step=conf["tokens_per_step"],
                   time_downsample=conf["time_downsample"], res_blocks=conf["vq_res_blocks"], beta=conf["vq_beta"],
                   ema=conf["vq_ema"], ema_decay=conf["vq_ema_decay"], dead_threshold=conf["vq_dead_threshold"])

    def pad_frames(self, mel: torch.Tensor) -> torch.Tensor:
        """Repeat the last frame so the length is a whole number of steps."""
        extra = (-mel.shape[1]) % self.ds
        if extra:
            mel = torch.cat([mel, mel[:, -1:].expand(-1, extra, -1)], dim=1)
        return mel

    def _latents(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.pad_frames(mel).transpose(1, 2))  # [B, G*D, T]
        B, _, T = h.shape
        return h.transpose(1, 2).reshape(B, T, self.G, self.D)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel [B, F, n_mels] -> tokens [B, ceil(F / ds), G] (int64)."""
        z = self._latents(mel)
        return self.quantizer.nearest(z.reshape(-1, self.D)).reshape(z.shape[:-1])

    def decode_latents(self, q: torch.Tensor) -> torch.Tensor:
        B, T = q.shape[:2]
        return self.decoder(q.reshape(B, T, self.G * self.D).transpose(1, 2)).transpose(1, 2)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, G] -> log-mel [B, T * ds, n_mels] (z-scored, like the input)."""
        return self.decode_latents(self.quantizer.lookup(tokens))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct a batch of crops; returns (recon [B, F', n_mels], tokens, losses with 'loss')."""
        target = self.pad_frames(mel)
        q, tokens, losses = self.quantizer(self._latents(mel))
        recon = self.decode_latents(q)
        losses["reconstruction"] = F.mse_loss(recon, target)
        losses["loss"] = losses["reconstruction"] + self.quantizer.beta * losses["commitment"] + losses.get("codebook", 0.0)
        return recon, tokens, losses


def save_vqvae(path: Path | str, model: VQVAE, extra: Mapping[str, Any] | None = None) -> None:
    """Write the checkpoint under a temporary name, then rename (readers never see half a file)."""
    with atomic_path(path) as tmp:
        torch.save({"hparams": model.hparams, "state_dict": model.state_dict(), **(extra or {})}, tmp)


def load_vqvae(path: Path | str, device: str | torch.device = "cpu") -> tuple[VQVAE, dict]:
    """The model (in eval mode) and the checkpoint's other entries (features, step, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer checkpoint at {path}: run `python -m tokenizer train` first")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = VQVAE(**ckpt["hparams"]).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, {k: v for k, v in ckpt.items() if k not in ("hparams", "state_dict")}
