"""WGAN-GP, the losses and one training step: `n_critic` critic updates, then one generator update.

The critic estimates the Wasserstein-1 distance between real and generated windows (E[D(real)] - E[D(fake)],
logged as `wasserstein`); the gradient penalty (Gulrajani et al.) keeps it near 1-Lipschitz by pulling the norm
of its input gradient towards 1 on random points between a real and a generated window, instead of clipping
weights. Adam with lr 1e-4 and betas (0.5, 0.9), gp weight 10 and 5 critic steps per generator step are the
WaveGAN paper's, the config's defaults.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from wavegan.models import WaveGAN


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite: training stops, the last checkpoint is kept."""


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     mix: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of (||grad_x D(x)|| - 1)^2 at x = mix * real + (1 - mix) * fake, `mix` ~ U[0, 1) per
    example unless given; differentiable (create_graph) so the critic's loss can be minimised through it."""
    if mix is None:
        mix = torch.rand(len(real), *([1] * (real.dim() - 1)), device=real.device)
    x = (mix * real + (1 - mix) * fake.detach()).requires_grad_(True)
    grad, = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def make_optimizers(model: WaveGAN, conf: Mapping[str, Any]) -> dict[str, torch.optim.Optimizer]:
    betas = (float(conf["wavegan_beta1"]), float(conf["wavegan_beta2"]))
    lr = float(conf["wavegan_lr"])
    return {"generator": torch.optim.Adam(model.generator.parameters(), lr, betas=betas),
            "critic": torch.optim.Adam(model.critic.parameters(), lr, betas=betas)}


def critic_step(model: WaveGAN, opt: torch.optim.Optimizer, real: torch.Tensor, gp_weight: float) -> dict[str, float]:
    """One critic update on a batch of real windows [B, 1, L] against as many fresh generated ones."""
    z = torch.randn(len(real), model.latent_dim, device=real.device)
    with torch.no_grad():
        fake = model.generator(z)
    d_real, d_fake = model.critic(real).mean(), model.critic(fake).mean()
    gp = gradient_penalty(model.critic, real, fake)
    loss = d_fake - d_real + gp_weight * gp
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"critic_loss": loss.item(), "gradient_penalty": gp.item(), "wasserstein": (d_real - d_fake).item()}


def generator_step(model: WaveGAN, opt: torch.optim.Optimizer, batch: int, device: torch.device) -> dict[str, float]:
    """One generator update: raise the critic's score of fresh generated windows (the critic is not stepped)."""
    z = torch.randn(batch, model.latent_dim, device=device)
    loss = -model.critic(model.generator(z)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    model.critic.zero_grad(set_to_none=True)  # its gradients from this loss are not a critic update
    opt.step()
    return {"generator_loss": loss.item()}


def train_step(model: WaveGAN, opts: Mapping[str, torch.optim.Optimizer], real_batches: Callable[[], torch.Tensor],
               conf: Mapping[str, Any], device: torch.device) -> dict[str, float]:
    """`wavegan_n_critic` critic updates (each on a new real batch from `real_batches`), then one generator
    update; the critic's numbers are means over its updates. NonFiniteLoss when a loss is NaN or infinite."""
    critic = [critic_step(model, opts["critic"], real_batches(), float(conf["wavegan_gp_weight"]))
              for _ in range(int(conf["wavegan_n_critic"]))]
    out = {k: sum(c[k] for c in critic) / len(critic) for k in critic[0]}
    out.update(generator_step(model, opts["generator"], int(conf["wavegan_batch_size"]), device))
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLoss(f"non-finite {', '.join(bad)}")
    return out
