"""A deterministic train/val/test split with no speaker (or speaker group) in two splits.

Speakers, not utterances, are dealt out: a model evaluated on voices it trained on would
look better than it is. Where several speaker ids share one timbre (the built-in corpus'
"en+f1" and "de+f1" are the same eSpeak variant speaking two languages), `group_of` maps
each speaker to that shared key and whole groups are dealt out, so "unseen speaker" means
an unseen timbre too. With too few units for that, the split falls back to utterances and
says so, so nobody mistakes it for a speaker-disjoint one.

`disjointness` measures, on the split as made, what the held-out splits share with train.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

SPLITS = ("train", "val", "test")


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _deal(units: list[str], size: Counter, n: int, fractions: Sequence[float]) -> dict[str, str]:
    """Units in the given order, each to the split furthest below its target share of utterances."""
    filled = [0.0, 0.0, 0.0]
    unit_split: dict[str, str] = {}
    for unit in units:
        # val and test each get one unit first so neither is left empty by a big speaker.
        empties = [i for i in (1, 2) if fractions[i] > 0 and filled[i] == 0]
        if empties and len(unit_split) >= 1:
            i = empties[0]
        else:
            i = max(range(3), key=lambda k: fractions[k] * n - filled[k])
        unit_split[unit] = SPLITS[i]
        filled[i] += size[unit]
    return unit_split


def assign_splits(
    utterances: Sequence[tuple[str, str]],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    min_speakers: int = 10,
    group_of: Optional[Callable[[str], str]] = None,
    group_name: str = "group",
) -> tuple[dict[str, str], str]:
    """Map utterance id -> split for (utterance id, speaker) pairs.

    Returns (assignment, mode); mode is "speaker", `group_name` (speakers dealt out in the
    groups `group_of(speaker)` names) or "utterance" (fewer than `min_speakers` units).
    Units are taken in a seeded hash order, each going to the split furthest below its
    target share of utterances, so the result does not depend on the order of the input.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers, got {list(fractions)}")
    total = float(sum(fractions))
    fractions = [f / total for f in fractions]
    key = group_of or (lambda spk: spk)
    unit_of = {spk: key(spk) for spk in {s for _, s in utterances}}
    per_unit = Counter(unit_of[spk] for _, spk in utterances)
    if len(per_unit) >= max(min_speakers, 3):
        mode = "speaker" if group_of is None else group_name
        unit_split = _deal(sorted(per_unit, key=lambda u: _rank(seed, u)), per_unit, len(utterances), fractions)
        return {u: unit_split[unit_of[s]] for u, s in utterances}, mode
    ids = sorted((u for u, _ in utterances), key=lambda u: _rank(seed, u))
    unit_split = _deal(ids, Counter(ids), len(utterances), fractions)
    return {u: unit_split[u] for u, _ in utterances}, "utterance"


# ---- what the held-out splits share with train -------------------------------------------------

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The tokens of a text, lower-cased, without punctuation: what "a word seen in train" compares."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Placed:
    """One kept utterance as the disjointness count sees it (timbre, language, text: '' when unknown)."""

    split: str
    speaker: str
    timbre: str = ""
    language: str = ""
    text: str = ""


def _held_out(rows: list[Placed], train: list[Placed]) -> dict:
    voices = {r.speaker for r in rows}
    out: dict = {"voices": len(voices), "voices_in_train": len(voices & {r.speaker for r in train})}
    known = [r for r in rows if r.timbre]
    timbres = {r.timbre for r in known}
    out["timbres"] = sorted(timbres) if known else None
    out["timbres_in_train"] = sorted(timbres & {r.timbre for r in train}) if known else None
    languages = {r.language for r in rows if r.language}
    out["languages"] = sorted(languages) if languages else None
    out["languages_in_train"] = sorted(languages & {r.language for r in train}) if languages else None
    texted = [r for r in rows if r.text]
    if not texted:
        out.update(texts=None, texts_in_train=None, words=None, words_in_train=None)
        return out
    train_texts = {r.text for r in train}
    train_words = {w for r in train for w in words(r.text)}
    tokens = [w for r in texted for w in words(r.text)]
    out["texts"] = len(texted)
    out["texts_in_train"] = sum(r.text in train_texts for r in texted)
    out["words"] = len(tokens)
    out["words_in_train"] = round(sum(w in train_words for w in tokens) / len(tokens), 4) if tokens else None
    return out


def disjointness(placed: Iterable[Placed]) -> dict:
    """For val and test: voices, timbres, languages and texts, and how many of each train has too.

    texts = utterances with a known text, texts_in_train = those whose text occurs verbatim in
    train; words = their word tokens, words_in_train = the fraction of them that occur in train
    texts. None where the corpus does not know (a folder of recordings has no timbre or text).
    """
    by_split: dict[str, list[Placed]] = {s: [] for s in SPLITS}
    for p in placed:
        by_split[p.split].append(p)
    return {s: _held_out(by_split[s], by_split["train"]) for s in ("val", "test")}


def disjointness_line(disjoint: dict) -> str:
    """One line for the end of prepare: what the test split shares with train."""
    t = disjoint["test"]
    parts = [f"{t['voices']} voices, {t['voices_in_train']} of them in train"]
    if t["timbres"] is not None:
        parts.append(f"{len(t['timbres'])} timbres ({', '.join(t['timbres'])}), {len(t['timbres_in_train'])} in train")
    if t["languages"] is not None:
        parts.append(f"languages shared with train: {', '.join(t['languages_in_train']) or 'none'}")
    if t["texts"] is not None:
        parts.append(f"{t['texts_in_train']} of {t['texts']} texts verbatim in train")
        if t["words_in_train"] is not None:
            parts.append(f"{100 * t['words_in_train']:.1f}% of {t['words']} words seen in train")
    return "disjoint: test " + "; ".join(parts)
