"""Conditional alignment: does a dream conditioned on a label value sound like that value?

A classifier of the label is fitted on real train-split clips (the corpus' log-mels, as recorded and, given
the tokenizer's round trip, as perfect tokens of them sound: the form every dream has) and then asked about the
dreams; its accuracy on dreams conditioned on each value is set beside chance and beside its accuracy on real
clips it has not seen: a held-out fifth of the train utterances (a voice of the train split is never in test,
so this is the one real reference every label has), and the test split's clips whose value the train split has
(a language, say), each as recorded and through the tokenizer (what perfect tokens score: the ceiling for
dreams). The features are those a label changes without a word being recognised: each mel band's mean, spread
and frame-to-frame change, which coarse bands move together, and the loudness envelope's rhythm, over the
clip's louder frames, after the clip's own level and spread are taken out (dreams are decoded at the corpus'
average level, real clips at their own).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from tokenizer.layout import DataLayout
from tokenizer.shards import iter_utterances

HELD_OUT = 0.2  # share of the train utterances the classifier does not see: its real-clip accuracy
LOUD_SHARE = 0.7  # the loudest frames of a clip that are its speech
COARSE = 20  # bands of the covariance features


def clip_features(db: np.ndarray) -> np.ndarray:
    """A clip's log-mel [frames, n_mels] (dB) -> a fixed-size vector, after the clip's own level and spread are
    taken out, over its loudest frames: per band the mean, std and mean absolute change; the covariance of
    `COARSE` bands and of their frame-to-frame changes (which bands move together: the vowels and consonants
    of a language); the loudness envelope's modulation spectrum up to 10 Hz (its syllable rate)."""
    db = np.asarray(db, np.float64)
    z = (db - db.mean()) / (db.std() + 1e-6)
    energy = z.mean(1)
    loud = z[energy >= np.quantile(energy, 1 - LOUD_SHARE)] if len(z) > 3 else z
    if len(loud) < 3:
        loud = np.concatenate([loud] * 3)
    coarse = np.stack([part.mean(1) for part in np.array_split(loud, COARSE, axis=1)], 1)
    upper = np.triu_indices(COARSE)
    envelope = np.abs(np.fft.rfft(energy - energy.mean(), n=512))[:52]
    return np.concatenate([loud.mean(0), loud.std(0), np.abs(np.diff(loud, axis=0)).mean(0),
                           np.cov(coarse.T)[upper], np.cov(np.diff(coarse, axis=0).T)[upper],
                           envelope / (envelope.sum() + 1e-6)]).astype(np.float32)


Roundtrip = Callable[[np.ndarray], np.ndarray]  # a real log-mel (dB) through the tokenizer and back (TokenCodec.roundtrip)


@dataclass
class RealClips:
    """One split's real clips as the classifier reads them: each clip's labels, its features as recorded, and
    (with the tokenizer's round trip) its features as perfect tokens of it sound. Read once, every label's
    classifier uses them; a split of more than `max_clips` clips is read as a random `max_clips` of them (the round
    trip is the cost), while every clip's labels stay known (`label_of`)."""

    labels: list[dict[str, str]]
    recorded: list[np.ndarray]
    tokenized: list[np.ndarray] | None
    every: dict[str, dict[str, str]] = field(default_factory=dict)  # utterance id -> labels, of every clip

    def label_of(self, utterance_id: str, label: str) -> str | None:
        """The `label` value of one utterance of the split (None: not among its clips, or unlabelled)."""
        return self.every.get(str(utterance_id), {}).get(label)

    @classmethod
    def read(cls, layout: DataLayout, split: str, roundtrip: Roundtrip | None = None, max_clips: int = 4000,
             seed: int = 0) -> "RealClips":
        folder = layout.mels(split)
        clips = lambda: (u for u in (iter_utterances(folder) if folder.is_dir() else ()) if len(u["mel"]) >= 8)  # noqa: E731
        labels_of = lambda u: {k[len("label_"):]: str(v) for k, v in u.items() if k.startswith("label_")}  # noqa: E731
        every = [(str(u.get("utterance_id", "")), labels_of(u)) for u in clips()]
        chosen = set(np.random.default_rng(seed).permutation(len(every))[:max_clips].tolist())
        labels, recorded, tokenized = [], [], [] if roundtrip is not None else None
        for i, u in enumerate(clips()):
            if i not in chosen:
                continue
            db = u["mel"].astype(np.float32) * float(u["std"]) + float(u["mean"])
            labels.append(labels_of(u))
            recorded.append(clip_features(db))
            if tokenized is not None:
                tokenized.append(clip_features(roundtrip(db)))
        return cls(labels, recorded, tokenized, dict(every))

    def of(self, label: str, values: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(recorded features, value indices, tokenized features or None) of the clips carrying one of `values`."""
        keep = [i for i, lab in enumerate(self.labels) if lab.get(label, "") in values]
        ys = np.array([values.index(self.labels[i][label]) for i in keep], dtype=int)
        stack = lambda feats: np.stack([feats[i] for i in keep]) if keep else np.zeros((0, 1), np.float32)
        return stack(self.recorded), ys, (stack(self.tokenized) if self.tokenized is not None else None)


@dataclass
class LabelClassifier:
    """A classifier of one label on `clip_features` (an RBF support-vector machine or a logistic regression,
    whichever cross-validates better on the train clips), fitted on real train-split clips as recorded and, with
    the tokenizer's round trip, as their tokens sound: a dream is heard through the tokenizer's decoder, so the
    classifier must know a language in that form too."""

    label: str
    values: list[str]
    model: object = None
    real_accuracy: float = float("nan")  # on the held-out real train clips
    n_train: int = 0
    n_held_out: int = 0
    per_value_real: dict[str, float] = field(default_factory=dict)
    test_accuracy: float = float("nan")  # on real test-split clips whose value the train split has
    n_test: int = 0
    # The same clips through the tokenizer (no round trip given: nan): what perfect tokens of real speech score,
    # the most a world model's dreams can be expected to.
    tokenized_accuracy: float = float("nan")
    tokenized_test_accuracy: float = float("nan")

    @classmethod
    def fit(cls, layout: DataLayout, label: str, values: Sequence[str], seed: int = 0, max_clips: int = 4000,
            roundtrip: Roundtrip | None = None, clips: Mapping[str, RealClips] | None = None) -> "LabelClassifier":
        """Fit on the train split's clips that carry one of `values` (`label_<label>` in its log-mel shards);
        `clips`: the splits already read (RealClips.read, with the same round trip). ValueError when fewer than two
        values have clips."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, GroupKFold
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        values = [str(v) for v in values]
        clips = dict(clips or {})
        for split in ("train", "test"):
            if split not in clips:
                clips[split] = RealClips.read(layout, split, roundtrip, max_clips, seed)
        x, y, xt = clips["train"].of(label, values)
        if len(set(y.tolist())) < 2:
            raise ValueError(f"{layout.mels('train')}: train clips carry {len(set(y.tolist()))} of the {len(values)} "
                             f"values of label '{label}': no classifier to score conditioned dreams with")
        order = np.random.default_rng(seed).permutation(len(y))[:max_clips]
        n_out = max(1, int(round(HELD_OUT * len(order))))
        out, fit = order[:n_out], order[n_out:]
        both = xt is not None
        train_x = np.concatenate([x[fit], xt[fit]]) if both else x[fit]
        train_y, groups = np.tile(y[fit], 2 if both else 1), np.tile(fit, 2 if both else 1)  # an utterance: one group
        # Which classifier, by cross-validation over the fitted utterances (both forms of one in the same fold)
        pipe = Pipeline([("scale", StandardScaler()), ("clf", SVC())])
        grid = [{"clf": [SVC(C=3.0)]}, {"clf": [LogisticRegression(max_iter=3000, C=0.1)]}]
        folds = min(3, int(np.bincount(y[fit]).min())) if len(fit) else 0
        model = (GridSearchCV(pipe, grid, cv=GroupKFold(folds)).fit(train_x, train_y, groups=groups).best_estimator_
                 if folds >= 2 else pipe.fit(train_x, train_y))
        hit = model.predict(x[out]) == y[out]
        per_value = {values[v]: float(hit[y[out] == v].mean()) for v in np.unique(y[out])}
        score = lambda feats, ys: float((model.predict(feats) == ys).mean()) if len(ys) else float("nan")
        test_x, test_y, test_xt = clips["test"].of(label, values)  # a value heard in train (a language, not a voice)
        return cls(label, values, model, float(hit.mean()), len(fit), n_out, per_value, score(test_x, test_y),
                   len(test_y), score(xt[out], y[out]) if xt is not None else float("nan"),
                   score(test_xt, test_y) if test_xt is not None else float("nan"))

    def predict(self, dbs: Sequence[np.ndarray]) -> list[str]:
        if not len(dbs):
            return []
        return [self.values[i] for i in self.model.predict(np.stack([clip_features(db) for db in dbs]))]


def alignment(classifier: LabelClassifier, dreams: Mapping[str, Sequence[np.ndarray]]) -> dict:
    """How often dreams conditioned on each value (value -> their log-mels) are classified as that value:
    overall and per value, with chance (one over the values) and the classifier on held-out real clips."""
    per_value, hits = {}, []
    for value, dbs in dreams.items():
        said = classifier.predict(dbs)
        got = [s == value for s in said]
        per_value[value] = {"acc": float(np.mean(got)) if got else float("nan"), "n": len(got),
                            "heard_as": {v: said.count(v) for v in sorted(set(said))}}
        hits += got
    return {"label": classifier.label, "acc": float(np.mean(hits)) if hits else float("nan"), "n": len(hits),
            "chance": 1.0 / len(classifier.values), "real_acc": classifier.real_accuracy,
            "real_n": classifier.n_held_out, "real_test_acc": classifier.test_accuracy,
            "real_test_n": classifier.n_test, "tokenized_acc": classifier.tokenized_accuracy,
            "tokenized_test_acc": classifier.tokenized_test_accuracy, "per_value": per_value}


def prompt_kept(classifier: LabelClassifier, completions: Sequence[tuple[str, Sequence[np.ndarray], np.ndarray | None]],
                roundtrip: Roundtrip | None = None) -> dict:
    """Do unconditioned completions keep their prompt's value? Per completion (the prompt's value, its dreams' log-mels
    after the prompt, the true continuation's log-mel or None): how often a dream is named as the prompt's value,
    beside the true continuation (through the tokenizer's `roundtrip` when given): the same model asked by a
    prompt instead of a label, and its ceiling."""
    values = [(v, d) for v, ds, _ in completions if v in classifier.values for d in ds if len(d) >= 8]
    truth = [(v, roundtrip(t) if roundtrip is not None else t) for v, _, t in completions
             if v in classifier.values and t is not None and len(t) >= 50]  # half a second of it at least
    named = classifier.predict([d for _, d in values])
    true_named = classifier.predict([t for _, t in truth])
    return {"acc": float(np.mean([n == v for n, (v, _) in zip(named, values)])) if values else float("nan"),
            "n": len(values), "true_acc": float(np.mean([n == v for n, (v, _) in zip(true_named, truth)]))
            if truth else float("nan"), "true_n": len(truth), "tokenized": roundtrip is not None}


def alignment_metrics(results: Mapping[str, dict], guidance: float = 1.0) -> dict[str, float]:
    """`dream/condition/{label}/acc`, `/chance`, `/real_acc`, `/over_chance`, and where measured `/real_test_acc` and
    the same clips through the tokenizer (`/tokenized_acc`, `/tokenized_test_acc`) of each label scored, and the
    guidance scale the dreams were drawn at (`dream/condition/guidance`)."""
    out = {"dream/condition/guidance": float(guidance)} if results else {}
    for label, r in results.items():
        base = f"dream/condition/{label}"
        out.update({f"{base}/acc": r["acc"], f"{base}/chance": r["chance"], f"{base}/real_acc": r["real_acc"],
                    f"{base}/over_chance": r["acc"] / r["chance"]})
        if r.get("real_test_n"):
            out[f"{base}/real_test_acc"] = r["real_test_acc"]
        for key in ("tokenized_acc", "tokenized_test_acc") if r.get("real_test_n") else ("tokenized_acc",):
            if np.isfinite(r.get(key, float("nan"))):
                out[f"{base}/{key}"] = r[key]
        kept = r.get("completions") or {}
        if kept.get("n"):
            out[f"{base}/completion_acc"] = kept["acc"]
    return out


def alignment_markdown(results: Mapping[str, dict], guidance: float = 1.0) -> str:
    """The table of acoustics.md: per label, dreams' accuracy beside chance and real clips (recorded, and through
    the tokenizer: what perfect tokens of them score)."""
    if not results:
        return ""
    how = (f"dreams guided at scale {guidance:g} (classifier-free guidance, --dream_guidance)" if guidance != 1
           else "dreams as trained, not guided")
    md = ["Conditional alignment: a classifier of each label fitted on real train clips, as recorded and as their "
          f"tokens sound (per-band log-mel statistics; a support-vector machine or a logistic regression, whichever "
          f"cross-validates better), names the value of every "
          f"conditioned dream ({how}). Real clips are scored as recorded / through the tokenizer:", "",
          "| label | dreams classified as their condition | chance | real held-out train clips | real test clips "
          "| per value |", "|---|---|---|---|---|---|"]
    both = lambda r, a, b: f"{r[a]:.1%}" + (f" / {r[b]:.1%}" if np.isfinite(r.get(b, float("nan"))) else "")
    for label, r in results.items():
        values = ", ".join(f"{v} {p['acc']:.0%} (n={p['n']})" for v, p in r["per_value"].items())
        test = (f"{both(r, 'real_test_acc', 'tokenized_test_acc')} (n={r['real_test_n']})" if r.get("real_test_n")
                else "none (no test clip has a train value)")
        md.append(f"| {label} | {r['acc']:.1%} (n={r['n']}) | {r['chance']:.1%} | "
                  f"{both(r, 'real_acc', 'tokenized_acc')} (n={r['real_n']}) | {test} | {values} |")
    for label, r in results.items():
        kept = r.get("completions") or {}
        if kept.get("n"):
            md += ["", f"Completions of real prompts (dreamt unconditioned) are named as their prompt's {label} "
                   f"{kept['acc']:.1%} of the time (n={kept['n']}); the true continuations"
                   + (" through the tokenizer" if kept["tokenized"] else "")
                   + (f" {kept['true_acc']:.1%} (n={kept['true_n']})." if kept["true_n"] else ": none long enough.")]
    return "\n".join(md) + "\n"
