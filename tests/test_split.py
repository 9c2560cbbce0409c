from collections import Counter

from tokenizer.split import assign_splits


def _utts(n_speakers, per_speaker):
    return [(f"s{s}-u{u}", f"s{s}") for s in range(n_speakers) for u in range(per_speaker)]


def test_speaker_disjoint_and_near_80_10_10():
    utts = _utts(40, 10)
    split, mode = assign_splits(utts, seed=3)
    assert mode == "speaker"
    by_speaker = {}
    for uid, spk in utts:
        by_speaker.setdefault(spk, set()).add(split[uid])
    assert all(len(s) == 1 for s in by_speaker.values())  # no speaker in two splits
    counts = Counter(split.values())
    assert abs(counts["train"] - 320) <= 10 and abs(counts["val"] - 40) <= 10 and abs(counts["test"] - 40) <= 10


def test_deterministic_and_independent_of_input_order():
    utts = _utts(20, 3)
    a, _ = assign_splits(utts, seed=1)
    b, _ = assign_splits(list(reversed(utts)), seed=1)
    c, _ = assign_splits(utts, seed=2)
    assert a == b and a != c


def test_too_few_speakers_falls_back_to_utterances():
    utts = _utts(2, 20)
    split, mode = assign_splits(utts, min_speakers=10)
    assert mode == "utterance"
    assert set(split.values()) == {"train", "val", "test"}


def test_val_and_test_never_left_empty_when_speakers_allow():
    utts = _utts(10, 1) + [("big-%d" % i, "big") for i in range(200)]
    split, mode = assign_splits(utts, min_speakers=3)
    assert mode == "speaker" and set(split.values()) == {"train", "val", "test"}
