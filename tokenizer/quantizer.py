"""The codebook of the VQ-VAE: nearest-code lookup, EMA updates, and restarts of codes that fall out of use.

A collapsed codebook wastes bits: a code used less than `dead_threshold` of the average is restarted
onto recent encoder outputs far from every code (a reservoir), in step on every rank of a
distributed run.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class VectorQuantizer(nn.Module):
    """Nearest-code quantization with a straight-through gradient.

    With `ema`, codes move to the running mean of the vectors assigned to them. Usage is
    counted over windows of `restart_window` training batches; at the end of each window,
    codes used less than `dead_threshold` x the average are restarted on random vectors of
    the current batch, so a collapsed codebook recovers within a few dozen steps.

    With `sync_ranks` (set by tokenizer.train under torchrun), training keeps the codebook and
    its statistics identical on every rank of the default process group: the first codebook
    and restarted codes are rank 0's picks (broadcast), and the EMA and usage counts are summed
    over the ranks (all-reduce), so the EMA sees every rank's batch, as one process would with
    world-size x the batch. Every rank must run each training forward (they do, in step).
    """

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, ema: bool = True,
                 decay: float = 0.99, dead_threshold: float = 0.1, eps: float = 1e-5, restart_window: int = 20,
                 reservoir_size: int = 16384):
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
        self.reservoir_size = reservoir_size
        self.reservoir: torch.Tensor | None = None  # recent valid encoder outputs (not saved: training state only)
        self._reservoir_at = 0
        self.sync_ranks = False

    def _synced(self) -> bool:
        if not (self.sync_ranks and self.training):
            return False
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        if self._synced():
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def _from_rank0(self, t: torch.Tensor) -> torch.Tensor:
        if self._synced():
            import torch.distributed as dist

            t = t.contiguous()
            dist.broadcast(t, src=0)
        return t

    def _count(self, z: torch.Tensor) -> float:
        """Vectors in this batch, on all ranks together."""
        return float(self._sum_over_ranks(torch.tensor([float(len(z))], device=z.device))[0])

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
        if len(z) >= self.codebook_size:  # distinct vectors: duplicate codes are exact ties, settled by float noise
            pick = z[torch.randperm(len(z), device=z.device)[: self.codebook_size]]
        else:
            pick = z[torch.randint(len(z), (self.codebook_size,), device=z.device)]
            pick = pick + 0.01 * pick.std() * torch.randn_like(pick)
        pick = self._from_rank0(pick)
        self.codebook.data.copy_(pick)
        self.ema_count.fill_(self._count(z) / self.codebook_size)
        self.ema_sum.copy_(pick * self.ema_count[:, None])  # a sum, so that sum / count is the code
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.codebook_size).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, z)
        if self._synced():  # the statistics of every rank's batch: the same update on every rank
            both = self._sum_over_ranks(torch.cat([counts[:, None], sums], 1))
            counts, sums = both[:, 0], both[:, 1:]
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.data.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def _remember(self, z: torch.Tensor) -> None:
        """Keep up to `reservoir_size` recent vectors in a ring (a random subset of each batch)."""
        if self.reservoir_size <= 0 or len(z) == 0:
            return
        per_batch = max(1, self.reservoir_size // self.restart_window)
        if len(z) > per_batch:
            z = z[torch.randperm(len(z), device=z.device)[:per_batch]]
        if self.reservoir is None or self.reservoir.device != z.device:
            self.reservoir, self._reservoir_at = z.new_empty(0, self.dim), 0
        if len(self.reservoir) < self.reservoir_size:
            self.reservoir = torch.cat([self.reservoir, z[: self.reservoir_size - len(self.reservoir)]])
            return
        at = (self._reservoir_at + torch.arange(len(z), device=z.device)) % self.reservoir_size
        self.reservoir[at] = z
        self._reservoir_at = int(at[-1] + 1) % self.reservoir_size

    @torch.no_grad()
    def _restart_candidates(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """n vectors to restart dead codes on: far-from-the-codebook ones are the likeliest."""
        pool = self.reservoir if self.reservoir is not None and len(self.reservoir) >= n else z
        cb = self.codebook.detach().float()
        d2 = torch.cat([torch.addmm(cb.pow(2).sum(1), part, cb.T, alpha=-2.0).min(1).values + part.pow(2).sum(1)
                        for part in pool.split(8192)]).clamp_min(0)
        if float(d2.sum()) <= 0:
            return pool[torch.randint(len(pool), (n,), device=pool.device)]
        return pool[torch.multinomial(d2, n, replacement=n > len(pool))]

    @torch.no_grad()
    def _restart_dead(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        self.window_counts += self._sum_over_ranks(torch.bincount(idx, minlength=self.codebook_size).float())
        self.window_batches += 1
        self._remember(z)
        if self.window_batches < self.restart_window:
            return
        dead = self.window_counts < self.dead_threshold * self.window_counts.sum() / self.codebook_size
        self.window_counts.zero_()
        self.window_batches = 0
        n_dead = int(dead.sum())
        if not self._synced():
            if n_dead == 0 or len(z) == 0:
                return
            pick = self._restart_candidates(z, n_dead)
            pick = pick + 0.01 * pick.std() * torch.randn_like(pick)
            n = len(z)
        else:  # every rank has the same `dead` (summed counts); rank 0 picks the vectors, for all
            n = self._count(z)
            if n_dead == 0 or n == 0:
                return
            if len(z) == 0 and (self.reservoir is None or len(self.reservoir) == 0):
                z = self.codebook.detach().float()  # a rank with nothing to offer (its picks are not used unless rank 0)
            pick = self._restart_candidates(z, n_dead)
            pick = self._from_rank0(pick + 0.01 * pick.std() * torch.randn_like(pick))
        self.codebook.data[dead] = pick
        self.ema_count[dead] = n / self.codebook_size
        self.ema_sum[dead] = pick * self.ema_count[dead][:, None]
        self.restarts += n_dead

    def forward(self, z: torch.Tensor, valid: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z [..., D] -> (quantized with straight-through gradient, indices [...], losses).

        `valid` [...] (bool) marks the vectors that are data, not padding: only they count
        in the losses, the EMA statistics and the restart reservoir.
        """
        shape = z.shape
        flat = z.reshape(-1, self.dim)
        keep = None if valid is None else valid.reshape(-1)
        data = flat if keep is None else flat[keep]
        if self.training and not bool(self.initialized):
            self._init_from(data.detach().float())
        idx = self.nearest(flat.detach())
        q = self.lookup(idx)
        q_data = q if keep is None else q[keep]
        losses = {"commitment": F.mse_loss(data, q_data.detach())}
        if not self.ema:
            losses["codebook"] = F.mse_loss(q_data, data.detach())
        if self.training:
            idx_data = idx if keep is None else idx[keep]
            if self.ema:
                self._ema_update(data.detach().float(), idx_data)
            self._restart_dead(data.detach().float(), idx_data)
        q_st = flat + (q - flat).detach()
        return q_st.reshape(shape), idx.reshape(shape[:-1]), losses
