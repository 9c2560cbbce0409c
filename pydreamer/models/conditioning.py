"""Conditioning a world model on corpus labels (a language, a voice, an utterance kind).

Each label has a learned embedding per value of its vocabulary (the train split's values, in
`tokens/meta.json`) plus one for "none" (id 0: the label dropped, unknown, or a value never
seen in training); the embeddings of all labels are summed. Every world model takes it where it
takes the action between steps (`WorldModel.with_condition`): the RSSM's GRU input, and so its
prior; the Transformer's next-step heads; the masked decoder's heads and block decoder. Dropping the label of a share
of training sequences (`condition_dropout`) trains the "none" embedding on all the data, so the
same model also forecasts and dreams unconditioned (what `evaluate` scores), and lets a dream be guided
(classifier-free guidance: the RSSM imagines each lane twice, on the condition and on none, the Transformer asks its
heads both ways, and each draws from the unconditioned distribution moved `guidance` times towards the conditioned
one; the masked decoder has none).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

Vocabulary = Sequence[tuple[str, Sequence[str]]]  # (label, its values) in the order of the config's `condition`


class UnknownCondition(ValueError):
    """A label or value the model was not trained with; the message lists the known ones."""


class Conditioning(nn.Module):
    def __init__(self, vocabulary: Vocabulary, dim: int, dropout: float):
        super().__init__()
        self.vocabulary = [(str(name), [str(v) for v in values]) for name, values in vocabulary]
        self.dim = int(dim)
        self.dropout = float(dropout)
        self.tables = nn.ModuleList(nn.Embedding(len(values) + 1, self.dim) for _, values in self.vocabulary)
        for table in self.tables:  # small at start: an untrained condition barely moves the GRU input
            nn.init.normal_(table.weight, std=0.1)
        # What imagination is conditioned on while no per-step ids are given: "none" for every label
        # unless `fixed` sets values (dreams; the `conditioned` context).
        self.register_buffer("fixed", torch.zeros(len(self.vocabulary), dtype=torch.long), persistent=False)
        self.guidance = 1.0  # classifier-free guidance of imagination on `fixed` (WorldModel.guide); 1 = none

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.vocabulary]

    def ids(self, values: Mapping[str, str]) -> torch.Tensor:
        """Label values by name -> ids [C] (labels not given: none). Unknown labels or values raise
        UnknownCondition listing the known ones."""
        known = dict(self.vocabulary)
        for name, value in values.items():
            if name not in known:
                raise UnknownCondition(f"the model is not conditioned on '{name}'; its labels: "
                                       f"{', '.join(self.names) or 'none'}")
            if value not in known[name]:
                raise UnknownCondition(f"unknown {name} '{value}'; the model knows {', '.join(known[name])}")
        return torch.tensor([known[n].index(values[n]) + 1 if n in values else 0 for n in self.names],
                            dtype=torch.long, device=self.fixed.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [..., C] -> the summed embedding [..., dim]."""
        out = self.tables[0](ids[..., 0])
        for c in range(1, len(self.tables)):
            out = out + self.tables[c](ids[..., c])
        return out

    def drop(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """ids [T, B, C] with each (sequence, label) replaced by none at rate `dropout`, the same over the chunk."""
        if self.dropout <= 0:
            return ids
        keep = torch.rand(ids.shape[1:], device=ids.device, generator=generator) >= self.dropout
        return ids * keep.unsqueeze(0).long()

