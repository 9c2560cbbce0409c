"""Linear probes of a world model's latent features: what does its state know about who speaks, in which
language, and what kind of utterance it is, beyond what the token counts alone already tell?

Each utterance becomes one vector: the mean and standard deviation over its steps of
`WorldModel.step_features` (`probe_features`), or, as the baseline without any world model, its
normalised token histogram per token position (`token_count_features`). A standardised logistic
regression, its regularisation chosen by cross-validation on the training rows only, is fitted on
the train split and scored on the test split (`run_probes`).

A probe can only name classes it was trained on. When the test split holds fewer than two labels
that also occur in train (a speaker probe on speaker-disjoint splits; a language probe when the test
speakers all speak one language), the test split cannot score it, and the probe is scored on a
seeded hold-out of the *train* utterances instead: whole speakers held out where every class keeps
training speakers (language, kind: the probe must generalise to new voices), else held-out
utterances of every class (speaker: the same voices, other utterances). `eval_on` and `note` in
the report say which, so a number is never read as what it is not.

Labels (`corpus_labels`): `speaker`; `language`, the speaker id's part before "+" (the synthetic
corpus' eSpeak voices, e.g. "en+f1"); `kind` (counting / syllables / sentence) for the synthetic
corpus, recovered exactly from the utterance id "synth-<i>-<voice>" and the corpus' voice list
(settings/prepare.json), the formula `tokenizer.synth.plan_synth_corpus` plans with.
"""
from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from pydreamer.models.base import seeded

Labeler = Callable[[Mapping[str, Any]], "str | None"]  # an utterance record -> its label, None = unknown
C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 6))
MAX_ITER = 1000
HOLDOUT_FRACTION = 0.25


# ---- one vector per utterance -------------------------------------------------------------

@torch.no_grad()
def probe_features(model, utterances: Sequence[np.ndarray], device: torch.device | str,
                   stats: tuple[str, ...] = ("mean", "std"), seed: int = 0) -> np.ndarray:
    """[N, F * len(stats)]: each utterance's step features (`model.wm.step_features`) summarised over its steps;
    the std says how much the state moves, the mean where it sits. Seeded: a latent that samples gives the
    same features every call."""
    unknown = set(stats) - {"mean", "std"}
    if unknown or not stats:
        raise ValueError(f"stats must be drawn from ('mean', 'std'), got {stats}")
    was_training = model.training
    model.eval()
    out = []
    try:
        with seeded(seed):
            for tokens in utterances:
                feats = model.wm.step_features(torch.as_tensor(np.asarray(tokens), dtype=torch.long,
                                                               device=device)).float()
                parts = {"mean": feats.mean(0), "std": feats.std(0, unbiased=False)}
                out.append(torch.cat([parts[s] for s in stats]).cpu().numpy())
    finally:
        model.train(was_training)
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def token_count_features(utterances: Sequence[np.ndarray], n_tokens: int, tokens_per_step: int) -> np.ndarray:
    """[N, G * K]: each utterance's token histogram per position g, normalised by its steps: what a probe can
    read without any world model (each position uses its own codes, so positions are kept apart)."""
    out = np.zeros((len(utterances), tokens_per_step * n_tokens), np.float32)
    for i, tokens in enumerate(utterances):
        t = np.asarray(tokens, dtype=np.int64).reshape(-1, tokens_per_step)
        if len(t) == 0:
            continue
        idx = t + np.arange(tokens_per_step) * n_tokens  # position g's codes live at g*K + code
        out[i] = np.bincount(idx.ravel(), minlength=tokens_per_step * n_tokens) / len(t)
    return out


# ---- one probe ----------------------------------------------------------------------------

def run_probes(train_feats: np.ndarray, train_labels: Sequence, test_feats: np.ndarray, test_labels: Sequence,
               seed: int = 0) -> dict[str, Any]:
    """A logistic regression on standardised features, C chosen by stratified cross-validation on train alone,
    scored on test. `acc_se` is its binomial standard error (test splits are small), `chance` the
    majority-class rate on test (the best constant guess), `chance_uniform` 1 / n_classes. Test rows whose
    label never occurs in train are left out (no probe can name them) and counted in `n_test_unseen`."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    ytr, yte = np.asarray(train_labels).astype(str), np.asarray(test_labels).astype(str)
    classes = sorted(set(ytr))
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least 2 classes in train, got {classes}")
    seen = np.isin(yte, classes)
    xte, yte_seen = np.asarray(test_feats)[seen], yte[seen]
    if not len(yte_seen):
        raise ValueError("no test label occurs in train: nothing the probe could name")
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
    folds = min(5, min(Counter(ytr).values()))
    # one BLAS thread: these fits are small, and a thread per core on a shared machine made them 100x slower
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", "The number of unique classes is greater than 50%")  # speakers, few clips
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
            fit = GridSearchCV(pipe, {"logisticregression__C": list(C_GRID)}, cv=cv, n_jobs=1).fit(train_feats, ytr)
            C, est = float(fit.best_params_["logisticregression__C"]), fit.best_estimator_
        else:  # a class with a single example: no stratified folds, a fixed C
            C, est = 1.0, pipe.set_params(logisticregression__C=1.0).fit(train_feats, ytr)
        pred = est.predict(xte)
    counts = Counter(yte_seen)
    acc = float(np.mean(pred == yte_seen))
    return {"acc": acc, "acc_se": float(np.sqrt(acc * (1 - acc) / len(yte_seen))),
            "chance": counts.most_common(1)[0][1] / len(yte_seen), "chance_uniform": 1.0 / len(classes),
            "n_train": int(len(ytr)), "n_test": int(len(yte_seen)),
            "n_test_unseen": int((~seen).sum()), "n_classes": len(classes), "n_test_classes": len(counts),
            "C": C, "cv_folds": int(folds) if folds >= 2 else 0}


def holdout_split(labels: Sequence[str], groups: Sequence[str] | None, fraction: float = HOLDOUT_FRACTION,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """(train rows, held-out rows) of one split, for probes the test split cannot score. With `groups`: whole
    groups (speakers) held out, in seeded order, up to `fraction` of the rows, each only if every class keeps
    a training row; None when that leaves fewer than 2 classes held out. Without: `fraction` of each class's
    rows (at least one, classes of 2 or more rows)."""
    y = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    if groups is not None:
        g = np.asarray(groups).astype(str)
        for name in rng.permutation(sorted(set(g))):
            if test.sum() >= fraction * len(y):
                break
            trial = test | (g == name)
            if set(y[~trial]) == set(y):
                test = trial
    else:
        for c in sorted(set(y)):
            rows = np.flatnonzero(y == c)
            if len(rows) >= 2:
                test[rng.choice(rows, max(1, int(fraction * len(rows))), replace=False)] = True
    if len(set(y[test])) < 2:
        return None
    return np.flatnonzero(~test), np.flatnonzero(test)


# ---- every label, latent against token counts ---------------------------------------------

def probe_report(model, train_utts: Sequence[Mapping[str, Any]], test_utts: Sequence[Mapping[str, Any]],
                 labels: Mapping[str, Labeler], device: torch.device | str, max_utterances: int = 400,
                 seed: int = 0) -> dict[str, dict[str, Any]]:
    """label -> {"latent": run_probes(...), "token_counts": run_probes(...), "chance", "eval_on", "note"}, or
    {"skipped": reason}. Utterance records carry `tokens` [T, G], `utterance_id` and `speaker` (TokenSplit's).
    At most `max_utterances` per split (a seeded subsample), features computed once for all labels.
    `eval_on` is "test", or "train_holdout_speakers" / "train_holdout_utterances" when the test split
    cannot score the label (see the module docstring)."""
    train, test = _subsample(train_utts, max_utterances, seed), _subsample(test_utts, max_utterances, seed + 1)
    wm = model.wm
    feats = {}
    for name, utts in (("train", train), ("test", test)):
        tokens = [u["tokens"] for u in utts]
        feats[name] = {"latent": probe_features(model, tokens, device, seed=seed),
                       "token_counts": token_count_features(tokens, wm.n_tokens, wm.tokens_per_step)}
    speakers = np.array([str(u.get("speaker", "")) for u in train])
    return {label: _probe_label(fn, train, test, feats, speakers, seed) for label, fn in labels.items()}


def _subsample(utts: Sequence[Mapping[str, Any]], n: int, seed: int) -> list[Mapping[str, Any]]:
    """At most n utterances, a seeded choice kept in corpus order (the first n could be a few speakers only)."""
    if n <= 0 or len(utts) <= n:
        return list(utts)
    pick = np.sort(np.random.default_rng(seed).choice(len(utts), n, replace=False))
    return [utts[i] for i in pick]


def _probe_label(fn: Labeler, train: list, test: list, feats: dict, speakers: np.ndarray, seed: int) -> dict:
    ytr = np.array([_label(fn, u) for u in train], dtype=object)
    yte = np.array([_label(fn, u) for u in test], dtype=object)
    rtr = np.flatnonzero(ytr != None)  # noqa: E711 (elementwise)
    classes = set(ytr[rtr])
    if len(classes) < 2:
        return {"skipped": f"train has {len(classes)} class(es) of this label ({sorted(classes)}): nothing to probe"}
    rte = np.flatnonzero([y is not None and y in classes for y in yte])
    unseen = int(sum(y is not None and y not in classes for y in yte))
    if len(set(yte[rte])) >= 2:
        where, a, b = "test", ("train", rtr), ("test", rte)
        note = f"{unseen} test utterances with labels unseen in train left out" if unseen else ""
    else:
        why = (f"the test split has {len(set(yte[rte]))} class(es) of this label seen in train "
               f"({unseen} test utterances with labels unseen in train)")
        split = holdout_split(ytr[rtr], speakers[rtr], seed=seed)
        where = "train_holdout_speakers"
        if split is None:
            split, where = holdout_split(ytr[rtr], None, seed=seed), "train_holdout_utterances"
        if split is None:
            return {"skipped": f"{why}, and train holds too few utterances per class to hold some out"}
        a, b = ("train", rtr[split[0]]), ("train", rtr[split[1]])
        held = (f"speakers {', '.join(sorted(set(speakers[b[1]])))}" if where.endswith("speakers")
                else "utterances of every class")
        note = f"{why}: scored on a seeded hold-out of train ({len(b[1])} utterances; {held} held out)"
    ys = {"train": ytr, "test": yte}
    out = {kind: run_probes(feats[a[0]][kind][a[1]], ys[a[0]][a[1]].astype(str),
                            feats[b[0]][kind][b[1]], ys[b[0]][b[1]].astype(str), seed=seed)
           for kind in ("latent", "token_counts")}
    out.update(chance=out["latent"]["chance"], eval_on=where, note=note)
    return out


def _label(fn: Labeler, u: Mapping[str, Any]) -> str | None:
    y = fn(u)
    return None if y is None or str(y) == "" else str(y)


def probe_metrics(report: Mapping[str, Mapping[str, Any]], split: str = "test") -> dict[str, float]:
    """MLflow metrics of a probe_report: {split}/probe/{label}/acc (latent), .../token_counts_acc, .../chance, and
    .../on_test (1: scored on the split itself; 0: on a hold-out of train, see `eval_on`); skipped labels give none."""
    out = {}
    for label, r in report.items():
        if "skipped" in r:
            continue
        out[f"{split}/probe/{label}/acc"] = float(r["latent"]["acc"])
        out[f"{split}/probe/{label}/token_counts_acc"] = float(r["token_counts"]["acc"])
        out[f"{split}/probe/{label}/chance"] = float(r["chance"])
        out[f"{split}/probe/{label}/on_test"] = float(r["eval_on"] == "test")
    return out


def probe_table(report: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: per label, the latent probe's accuracy beside the token-count probe's and chance, and where scored."""
    rows = ["| label | latent probe acc | token-count probe acc | chance | scored on |", "|---|---|---|---|---|"]
    for label, r in report.items():
        if "skipped" in r:
            rows.append(f"| {label} | skipped: {r['skipped']} |  |  |  |")
            continue
        rows.append(f"| {label} | {r['latent']['acc']:.3f} | {r['token_counts']['acc']:.3f} | {r['chance']:.3f} "
                    f"| {r['eval_on']} ({r['latent']['n_test']} utterances) |")
    return "\n".join(rows)


# ---- the labels a corpus has --------------------------------------------------------------

def speaker_of(u: Mapping[str, Any]) -> str | None:
    return str(u.get("speaker") or "") or None


def language_of(u: Mapping[str, Any]) -> str | None:
    """The synthetic corpus' language: the eSpeak voice's part before "+" ("en+f1" -> "en"); None otherwise."""
    speaker = str(u.get("speaker") or "")
    return speaker.split("+", 1)[0] if "+" in speaker else None


_SYNTH_ID = re.compile(r"^synth-(\d+)-(.+)$")


def synth_kind(utterance_id: str, voices: Sequence[str]) -> str | None:
    """The kind of synthetic utterance number i spoken by voices[i % n] (plan_synth_corpus' round-robin); None
    when the id is not a synthetic one or its voice is not the one the plan gives number i (wrong voice list)."""
    from tokenizer.synth import KINDS

    m = _SYNTH_ID.match(str(utterance_id))
    if not m or not voices:
        return None
    i, n = int(m.group(1)), len(voices)
    if voices[i % n] != m.group(2):
        return None
    return KINDS[(i % n + i // n) % len(KINDS)]


def synth_voices_of(data_dir: Path | str) -> list[str] | None:
    """The synthetic corpus' voice list in plan order, from the prepare stage's settings; None when the corpus
    is not synthetic or the settings are gone."""
    from tokenizer.layout import DataLayout
    from tokenizer.synth import synth_voices

    path = DataLayout.of(data_dir).settings("prepare")
    try:
        settings = json.loads(path.read_text())
        if settings.get("source") != "synth":
            return None
        return synth_voices(list(settings["synth_languages"]), int(settings["synth_voices_per_language"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def corpus_labels(data_dir: Path | str | None = None) -> dict[str, Labeler]:
    """The labels to probe: speaker and language always (language is None off the synthetic corpus, so its probe
    is skipped there), kind when `data_dir` is a synthetic corpus whose prepare settings are kept."""
    labels: dict[str, Labeler] = {"speaker": speaker_of, "language": language_of}
    voices = synth_voices_of(data_dir) if data_dir is not None else None
    if voices:
        labels["kind"] = lambda u: synth_kind(str(u.get("utterance_id", "")), voices)
    return labels
