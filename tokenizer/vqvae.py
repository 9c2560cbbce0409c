"""The VQ-VAE that turns a log-mel spectrogram into a sequence of token steps and back.

Time is downsampled `time_downsample` times by strided convolutions; each step is
`tokens_per_step` (G) vectors quantized with one shared codebook, so a step is G tokens
of log2(codebook_size) bits each. The codebook is kept alive by EMA updates and by
restarting codes that fall out of use (a collapsed codebook wastes bits).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from runtime.files import atomic_path
from tokenizer.quantizer import VectorQuantizer

__all__ = ["VQVAE", "VectorQuantizer", "load_vqvae", "save_vqvae"]


class CausalConv1d(nn.Conv1d):
    """A convolution padded on the left only: output i sees inputs up to the end of its own stride block.

    Kernel k, stride s, dilation d: pad d(k-1) - (s-1) on the left, so output i's last input is
    i*s + s-1. Chained, step t of the encoder depends on frames < (t+1)*ds and on none after
    (a token holds no lookahead); the parameters are those of an nn.Conv1d of the same shape.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, dilation=dilation)
        self.left = dilation * (kernel_size - 1) - (stride - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


def _conv(causal: bool, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> nn.Conv1d:
    """The encoder's convolution: centred (`padding` both sides) or causal (left padding only)."""
    if causal:
        return CausalConv1d(cin, cout, kernel, stride=stride, dilation=dilation)
    return nn.Conv1d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation)


class ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int = 1, causal: bool = False):
        super().__init__()
        self.net = nn.Sequential(
            nn.GELU(), _conv(causal, channels, channels, 3, padding=dilation, dilation=dilation),
            nn.GELU(), nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x + _masked(self.net, x, mask)


def _masked(layers: nn.Sequential, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Run `layers` with every frame past a clip's end zeroed before each convolution.

    A convolution zero-pads a clip alone; zeroing padded frames in a batch gives every
    convolution the same inputs, so a clip's tokens do not depend on its batch mates.
    `mask` [B, 1, T] is at the input's frame rate and follows it through strided layers.
    """
    for layer in layers:
        if mask is None:
            x = layer(x)
            continue
        if isinstance(layer, ResBlock):
            x = layer(x, mask)
        elif isinstance(layer, (nn.Conv1d, nn.ConvTranspose1d)):
            x = layer(x * mask)
            if x.shape[-1] != mask.shape[-1]:  # strided: the valid length scales with the frame rate
                lengths = mask.sum(-1, keepdim=True) * x.shape[-1] / mask.shape[-1]
                mask = (torch.arange(x.shape[-1], device=x.device) < lengths).to(x.dtype)
        else:
            x = layer(x)
    return x if mask is None else x * mask


def _res_stack(channels: int, n: int, causal: bool = False) -> list[nn.Module]:
    return [ResBlock(channels, dilation=3 ** (i % 3), causal=causal) for i in range(n)]


class VQVAE(nn.Module):
    """Log-mel <-> token steps. `band_bins`: the mel bins below the source's bandwidth; the
    empty ones above it weigh `out_of_band_weight` in the reconstruction loss (a constant
    floor must not crowd out the bins that carry speech).

    `causal`: the encoder sees frames up to the end of each step only (CausalConv1d), so a world
    model's 1-step forecast is a forecast, not partly a lookahead; the decoder stays centred (it
    renders tokens, it is not used to forecast). `norm_stats` (mean, std in dB): the corpus
    statistics the input is z-scored with (mel_norm corpus); None = each utterance's own.
    `magnitude_weight`: a second reconstruction term on linear magnitude (relative L1; `magnitude_scale`
    is ln-magnitude per unit of the z-scored input). An MSE on dB alone regresses a spectrum's peaks
    toward the mean (the round trip lost 40% of the RMS and flattened the spectrum); on linear
    magnitude the peaks carry most of the loss, so they are kept.
    `postfilter` (per mel bin, `scale` and `shift`): the decoder's output spread back to the real spread
    of each bin (global-variance compensation, fitted on train after training: `fit_postfilter`), applied
    by `decode` only: a quantized code can only say the average of what it stands for, so decoded bins
    vary less than real ones and their peaks are lower.
    These are kept in `hparams` only when set, so a default checkpoint is as before.
    """

    def __init__(self, n_mels: int = 80, channels: int = 192, code_dim: int = 64, codebook_size: int = 1024,
                 tokens_per_step: int = 4, time_downsample: int = 4, res_blocks: int = 2, beta: float = 0.25,
                 ema: bool = True, ema_decay: float = 0.99, dead_threshold: float = 0.1,
                 band_bins: int = 0, out_of_band_weight: float = 1.0, reservoir_size: int = 16384,
                 causal: bool = False, norm_stats: Sequence[float] | None = None,
                 magnitude_weight: float = 0.0, magnitude_scale: float = 1.0,
                 postfilter: Mapping[str, Sequence[float]] | None = None):
        super().__init__()
        if time_downsample < 1 or time_downsample & (time_downsample - 1):
            raise ValueError(f"time_downsample must be a power of two (1, 2, 4, 8, ...), got {time_downsample}")
        band_bins = n_mels if band_bins <= 0 else min(band_bins, n_mels)
        self.hparams = dict(n_mels=n_mels, channels=channels, code_dim=code_dim, codebook_size=codebook_size,
                            tokens_per_step=tokens_per_step, time_downsample=time_downsample, res_blocks=res_blocks,
                            beta=beta, ema=ema, ema_decay=ema_decay, dead_threshold=dead_threshold,
                            band_bins=band_bins, out_of_band_weight=out_of_band_weight, reservoir_size=reservoir_size)
        self.causal = bool(causal)
        self.norm_stats = None if norm_stats is None else (float(norm_stats[0]), float(norm_stats[1]))
        if self.causal:
            self.hparams["causal"] = True
        if self.norm_stats is not None:
            self.hparams["norm_stats"] = list(self.norm_stats)
        self.magnitude_weight, self.magnitude_scale = float(magnitude_weight), float(magnitude_scale)
        if self.magnitude_weight > 0:
            self.hparams.update(magnitude_weight=self.magnitude_weight, magnitude_scale=self.magnitude_scale)
        self.register_buffer("post_scale", torch.ones(n_mels), persistent=False)
        self.register_buffer("post_shift", torch.zeros(n_mels), persistent=False)
        if postfilter is not None:
            self.set_postfilter(postfilter["scale"], postfilter["shift"])
        self.n_mels, self.G, self.D, self.ds = n_mels, tokens_per_step, code_dim, time_downsample
        weight = torch.full((n_mels,), float(out_of_band_weight))
        weight[:band_bins] = 1.0
        self.register_buffer("bin_weight", weight / weight.mean(), persistent=False)
        n_down = int(math.log2(time_downsample))
        c = self.causal
        enc: list[nn.Module] = [_conv(c, n_mels, channels, 3, padding=1), *_res_stack(channels, res_blocks, c)]
        for _ in range(n_down):
            enc += [nn.GELU(), _conv(c, channels, channels, 4, stride=2, padding=1), *_res_stack(channels, res_blocks, c)]
        enc += [nn.GELU(), nn.Conv1d(channels, tokens_per_step * code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv1d(tokens_per_step * code_dim, channels, 3, padding=1), *_res_stack(channels, res_blocks)]
        for _ in range(n_down):
            dec += [nn.GELU(), nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1), *_res_stack(channels, res_blocks)]
        dec += [nn.GELU(), nn.Conv1d(channels, n_mels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.quantizer = VectorQuantizer(codebook_size, code_dim, beta, ema, ema_decay, dead_threshold,
                                         reservoir_size=reservoir_size)

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any], band_bins: int = 0, norm_stats: Sequence[float] | None = None,
                  magnitude_scale: float = 1.0) -> "VQVAE":
        return cls(n_mels=conf["n_mels"], channels=conf["vq_channels"], code_dim=conf["vq_code_dim"],
                   codebook_size=conf["codebook_size"], tokens_per_step=conf["tokens_per_step"],
                   time_downsample=conf["time_downsample"], res_blocks=conf["vq_res_blocks"], beta=conf["vq_beta"],
                   ema=conf["vq_ema"], ema_decay=conf["vq_ema_decay"], dead_threshold=conf["vq_dead_threshold"],
                   band_bins=band_bins, out_of_band_weight=conf["vq_out_of_band_weight"],
                   reservoir_size=conf["vq_restart_reservoir"], causal=bool(conf.get("vq_causal", False)),
                   norm_stats=norm_stats, magnitude_weight=float(conf.get("vq_magnitude_weight", 0.0)),
                   magnitude_scale=magnitude_scale)

    def pad_frames(self, mel: torch.Tensor) -> torch.Tensor:
        """Repeat the last frame so the length is a whole number of steps."""
        extra = (-mel.shape[1]) % self.ds
        if extra:
            mel = torch.cat([mel, mel[:, -1:].expand(-1, extra, -1)], dim=1)
        return mel

    def _mask(self, lengths: torch.Tensor | None, frames: int, rate: int, device: torch.device) -> torch.Tensor | None:
        """[B, 1, frames // rate] 1.0 on the steps (rate=ds) or frames (rate=1) inside each clip."""
        if lengths is None:
            return None
        valid = -(-torch.as_tensor(lengths, device=device) // self.ds) * (self.ds // rate)
        return (torch.arange(frames // rate, device=device) < valid[:, None]).float()[:, None]

    def _latents(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths` [B] (frames): padded frames past them never reach the clip's latents.

        A clip's frames up to a whole step must repeat its last frame (as `pad_frames` does
        for a clip alone); `tokenize` pads with mode='edge' for that."""
        x = self.pad_frames(mel).transpose(1, 2)
        h = _masked(self.encoder, x, self._mask(lengths, x.shape[-1], 1, x.device))  # [B, G*D, T]
        B, _, T = h.shape
        return h.transpose(1, 2).reshape(B, T, self.G, self.D)

    def encode(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Log-mel [B, F, n_mels] -> tokens [B, ceil(F / ds), G] (int64); with `lengths`, batch-invariant."""
        z = self._latents(mel, lengths)
        return self.quantizer.nearest(z.reshape(-1, self.D)).reshape(z.shape[:-1])

    def decode_latents(self, q: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        B, T = q.shape[:2]
        x = q.reshape(B, T, self.G * self.D).transpose(1, 2)
        return _masked(self.decoder, x, self._mask(lengths, T * self.ds, self.ds, x.device)).transpose(1, 2)

    def decode(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens [B, T, G] -> log-mel [B, T * ds, n_mels] (z-scored, like the input; through the postfilter)."""
        return self.decode_latents(self.quantizer.lookup(tokens), lengths) * self.post_scale + self.post_shift

    def set_postfilter(self, scale: Sequence[float] | torch.Tensor, shift: Sequence[float] | torch.Tensor) -> None:
        self.post_scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        self.post_shift.copy_(torch.as_tensor(shift, dtype=torch.float32))
        self.hparams["postfilter"] = {"scale": self.post_scale.tolist(), "shift": self.post_shift.tolist()}

    @torch.no_grad()
    def fit_postfilter(self, crops: torch.Tensor) -> None:
        """Per mel bin, the affine map taking the decoded crops' mean and spread to the real ones'."""
        was = self.training
        self.eval()
        recon = self.decode_latents(self.quantizer.lookup(self.encode(crops)))[:, :crops.shape[1]]
        self.train(was)
        real, recon = crops.reshape(-1, self.n_mels).float(), recon.reshape(-1, self.n_mels).float()
        scale = real.std(0) / recon.std(0).clamp_min(1e-3)
        self.set_postfilter(scale, real.mean(0) - scale * recon.mean(0))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct a batch of crops; returns (recon [B, F', n_mels], tokens, losses with 'loss')."""
        target = self.pad_frames(mel)
        q, tokens, losses = self.quantizer(self._latents(mel))
        recon = self.decode_latents(q)
        losses["reconstruction"] = ((recon - target).pow(2) * self.bin_weight).mean()
        losses["loss"] = losses["reconstruction"] + self.quantizer.beta * losses["commitment"] + losses.get("codebook", 0.0)
        if self.magnitude_weight > 0:
            losses["magnitude"] = self.magnitude_loss(recon, target)
            losses["loss"] = losses["loss"] + self.magnitude_weight * losses["magnitude"]
        return recon, tokens, losses


    def magnitude_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per crop, the squared error of linear magnitudes over the crop's mean squared magnitude (level-free).

        Squared, not absolute: its optimum is the conditional mean of the magnitude, which keeps the energy;
        an L1's is the median, below the mean for the skewed magnitudes of speech."""
        a = self.magnitude_scale
        target_mag = torch.exp(a * target)
        recon_mag = torch.exp(a * recon.clamp(max=float(target.max()) + 2.0))  # a wild output cannot overflow
        dist = ((recon_mag - target_mag).pow(2) * self.bin_weight).mean(dim=(1, 2))
        return (dist / target_mag.pow(2).mean(dim=(1, 2)).clamp_min(1e-12)).mean()


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


def weights_sha256(path: Path | str) -> str:
    """The sha256 of a tokenizer checkpoint's hyperparameters and weights, not of its file: a retrain to the same
    weights (another time stamp, another zip layout) is the same tokenizer."""
    from runtime.distributed import weights_digest

    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    hparams = sorted((str(k), repr(v)) for k, v in dict(ckpt.get("hparams") or {}).items())
    return weights_digest({**{f"hparams.{k}": torch.tensor(list(v.encode())) for k, v in hparams},
                           **ckpt["state_dict"]})
