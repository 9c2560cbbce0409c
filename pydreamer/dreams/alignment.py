"""Conditional alignment: does a dream conditioned on a label value sound like that value?

A classifier of the label is fitted on real train-split clips (the corpus' log-mels) and then asked
about the dreams; its accuracy on dreams conditioned on each value is set beside chance and beside its
accuracy on real clips it has not seen: a held-out fifth of the train utterances (a voice of the
train split is never in test, so this is the one real reference every label has), and the test
split's clips whose value the train split has (a language, say). The features are
those a label changes without a word being recognised: each mel band's mean, spread and frame-to-frame
change, which coarse bands move together, and the loudness envelope's rhythm, over the clip's louder
frames, after the clip's own level and spread are taken out (dreams are
decoded at the corpus' average level, real clips at their own).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

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


@dataclass
class LabelClassifier:
    """A logistic regression of one label on `clip_features`, fitted on real train-split clips."""

    label: str
    values: list[str]
    model: object = None
    real_accuracy: float = float("nan")  # on the held-out real train clips
    n_train: int = 0
    n_held_out: int = 0
    per_value_real: dict[str, float] = field(default_factory=dict)
    test_accuracy: float = float("nan")  # on real test-split clips whose value the train split has
    n_test: int = 0

    @classmethod
    def fit(cls, layout: DataLayout, label: str, values: Sequence[str], seed: int = 0,
            max_clips: int = 4000) -> "LabelClassifier":
        """Fit on the train split's clips that carry one of `values` (`label_<label>` in its log-mel shards);
        ValueError when fewer than two values have clips."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        values = [str(v) for v in values]
        feats, ys = _labelled_clips(layout, "train", label, values)
        if len(set(ys)) < 2:
            raise ValueError(f"{layout.mels('train')}: train clips carry {len(set(ys))} of the {len(values)} values "
                             f"of label '{label}': no classifier to score conditioned dreams with")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(ys))[:max_clips]
        x, y = np.stack(feats)[order], np.array(ys)[order]
        n_out = max(1, int(round(HELD_OUT * len(y))))
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
        model.fit(x[n_out:], y[n_out:])
        hit = model.predict(x[:n_out]) == y[:n_out]
        per_value = {values[v]: float(hit[y[:n_out] == v].mean()) for v in np.unique(y[:n_out])}
        test_x, test_y = _labelled_clips(layout, "test", label, values)  # a value heard in train (a language, not a voice)
        test_acc = float((model.predict(np.stack(test_x)) == np.array(test_y)).mean()) if test_y else float("nan")
        return cls(label, values, model, float(hit.mean()), len(y) - n_out, n_out, per_value, test_acc, len(test_y))

    def predict(self, dbs: Sequence[np.ndarray]) -> list[str]:
        if not len(dbs):
            return []
        return [self.values[i] for i in self.model.predict(np.stack([clip_features(db) for db in dbs]))]


def _labelled_clips(layout: DataLayout, split: str, label: str, values: list[str]) -> tuple[list, list[int]]:
    """Features and value indices of the split's clips that carry one of `values`."""
    feats, ys = [], []
    folder = layout.mels(split)
    for u in iter_utterances(folder) if folder.is_dir() else ():
        value = str(u.get(f"label_{label}", ""))
        if value in values and len(u["mel"]) >= 8:
            feats.append(clip_features(u["mel"].astype(np.float32) * float(u["std"]) + float(u["mean"])))
            ys.append(values.index(value))
    return feats, ys


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
            "real_test_n": classifier.n_test, "per_value": per_value}


def alignment_metrics(results: Mapping[str, dict], guidance: float = 1.0) -> dict[str, float]:
    """`dream/condition/{label}/acc`, `/chance`, `/real_acc` and `/over_chance` of each label scored, and the
    guidance scale the dreams were drawn at (`dream/condition/guidance`)."""
    out = {"dream/condition/guidance": float(guidance)} if results else {}
    for label, r in results.items():
        base = f"dream/condition/{label}"
        out.update({f"{base}/acc": r["acc"], f"{base}/chance": r["chance"], f"{base}/real_acc": r["real_acc"],
                    f"{base}/over_chance": r["acc"] / r["chance"]})
        if r.get("real_test_n"):
            out[f"{base}/real_test_acc"] = r["real_test_acc"]
    return out


def alignment_markdown(results: Mapping[str, dict], guidance: float = 1.0) -> str:
    """The table of acoustics.md: per label, dreams' accuracy beside chance and real clips."""
    if not results:
        return ""
    how = (f"dreams guided at scale {guidance:g} (classifier-free guidance, --dream_guidance)" if guidance != 1
           else "dreams as trained, not guided")
    md = ["Conditional alignment: a classifier of each label fitted on real train clips (per-band log-mel "
          f"statistics, logistic regression) names the value of every conditioned dream ({how}):", "",
          "| label | dreams classified as their condition | chance | real held-out train clips | real test clips | per value |",
          "|---|---|---|---|---|---|"]
    for label, r in results.items():
        values = ", ".join(f"{v} {p['acc']:.0%} (n={p['n']})" for v, p in r["per_value"].items())
        test = f"{r['real_test_acc']:.1%} (n={r['real_test_n']})" if r.get("real_test_n") else "none (no test clip has a train value)"
        md.append(f"| {label} | {r['acc']:.1%} (n={r['n']}) | {r['chance']:.1%} | {r['real_acc']:.1%} "
                  f"(n={r['real_n']}) | {test} | {values} |")
    return "\n".join(md) + "\n"
