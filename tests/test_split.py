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


# ---- grouped split: the built-in corpus deals out timbres, not "<language>+<variant>" voices ----------

from tokenizer.split import Placed, disjointness, disjointness_line, words  # noqa: E402
from tokenizer.synth import VARIANTS, timbre_of  # noqa: E402


def _voices(languages, variants, per_voice):
    return [(f"{lang}+{v}-u{u}", f"{lang}+{v}") for lang in languages for v in variants for u in range(per_voice)]


def test_no_variant_of_a_test_or_val_voice_is_in_train_under_any_language():
    utts = _voices(["en", "es", "pt", "de"], VARIANTS, 3)
    for seed in range(5):
        split, mode = assign_splits(utts, (0.7, 0.1, 0.2), seed, min_speakers=6, group_of=timbre_of, group_name="timbre")
        assert mode == "timbre"
        variants = {s: {timbre_of(spk) for uid, spk in utts if split[uid] == s} for s in ("train", "val", "test")}
        assert variants["test"] and variants["val"]
        assert not variants["test"] & variants["train"] and not variants["val"] & variants["train"]
        assert not variants["test"] & variants["val"]
        # every language of a held-out timbre goes with it
        test_voices = {spk for uid, spk in utts if split[uid] == "test"}
        assert test_voices == {f"{lang}+{v}" for lang in ("en", "es", "pt", "de") for v in variants["test"]}


def test_at_least_n_test_timbres_when_the_fractions_ask_for_them():
    utts = _voices(["en", "de"], VARIANTS, 5)   # 19 timbres of 10 utterances
    for seed in range(10):
        split, _ = assign_splits(utts, (0.7, 0.1, 0.2), seed, min_speakers=6, group_of=timbre_of)
        test = {timbre_of(spk) for uid, spk in utts if split[uid] == "test"}
        assert len(test) >= 3, seed
        assert Counter(split.values())["test"] >= 30


def test_grouping_counts_groups_against_min_speakers():
    utts = _voices(["en", "es", "pt"], ("m1", "f1", "m2", "f2"), 2)  # 12 voices, but 4 timbres
    _, mode = assign_splits(utts, min_speakers=6, group_of=timbre_of, group_name="timbre")
    assert mode == "utterance"
    _, mode = assign_splits(utts, min_speakers=3, group_of=timbre_of, group_name="timbre")
    assert mode == "timbre"


def test_folder_corpora_still_split_by_speaker_exactly_as_before(tmp_path):
    from runtime.config import load_config
    from tokenizer.prepare import _listed

    utts = _utts(40, 10)
    plain, mode = assign_splits(utts, seed=3)
    identity, mode2 = assign_splits(utts, seed=3, group_of=lambda s: s)
    assert mode == "speaker" and mode2 == "group" and plain == identity
    # prepare lists a folder (names only, nothing decoded) and deals out speakers, not timbres:
    # folders named like synth voices stay separate speakers
    speakers = [f"{lang}+{v}" for lang in ("en", "de") for v in ("m1", "f1", "m2")] + [f"s{i}" for i in range(6)]
    for spk in speakers:
        for k in range(3):
            (tmp_path / spk).mkdir(exist_ok=True)
            (tmp_path / spk / f"c{k}.wav").write_bytes(b"")
    conf = load_config(["defaults", "audio", "small"])
    conf.update(source="folder", data_root=str(tmp_path))
    records, _, assignment, mode = _listed(conf)
    assert mode == "speaker" and len(records) == 3 * len(speakers)
    expected, _ = assign_splits([(r.utterance_id, r.speaker) for r in records], conf.split_fractions, conf.seed,
                                conf.min_split_speakers)
    assert assignment == expected


def _placed():
    return [
        Placed("train", "en+m1", "m1", "en", "One two three."),
        Placed("train", "de+m1", "m1", "de", "eins zwei drei"),
        Placed("train", "en+f1", "f1", "en", "The cat sees a dog."),
        Placed("val", "es+m2", "m2", "es", "uno dos"),
        Placed("test", "en+f2", "f2", "en", "One two three."),      # verbatim in train
        Placed("test", "pt+f2", "f2", "pt", "um dois"),             # new language, new words
        Placed("test", "en+m1", "m1", "en", "The cat sees ONE bird"),  # a train voice: must be counted
    ]


def test_disjointness_counts_on_a_hand_made_split():
    d = disjointness(_placed())
    t = d["test"]
    assert t["voices"] == 3 and t["voices_in_train"] == 1
    assert t["timbres"] == ["f2", "m1"] and t["timbres_in_train"] == ["m1"]
    assert t["languages"] == ["en", "pt"] and t["languages_in_train"] == ["en"]
    assert t["texts"] == 3 and t["texts_in_train"] == 1
    # test words: one two three | um dois | the cat sees one bird -> 10 tokens, 7 seen in train
    assert t["words"] == 10 and t["words_in_train"] == 0.7
    v = d["val"]
    assert v["voices"] == 1 and v["voices_in_train"] == 0 and v["timbres_in_train"] == []
    assert v["languages_in_train"] == [] and v["texts_in_train"] == 0 and v["words_in_train"] == 0.0
    line = disjointness_line(d)
    assert line.startswith("disjoint: test 3 voices, 1 of them in train")
    assert "2 timbres (f2, m1), 1 in train" in line and "1 of 3 texts" in line and "70.0% of 10 words" in line


def test_disjointness_without_timbres_or_texts_says_unknown():
    d = disjointness([Placed("train", "spk1"), Placed("val", "spk2"), Placed("test", "spk3"), Placed("test", "spk1")])
    t = d["test"]
    assert t["voices"] == 2 and t["voices_in_train"] == 1
    assert t["timbres"] is None and t["languages"] is None and t["texts"] is None and t["words_in_train"] is None
    assert disjointness_line(d) == "disjoint: test 2 voices, 1 of them in train"


def test_words_are_lower_cased_tokens_without_punctuation():
    assert words("Uno, DOS; tres.") == ["uno", "dos", "tres"]
    assert words("Der Bär läuft.") == ["der", "bär", "läuft"]


def test_prepare_manifest_reports_disjointness_of_the_kept_utterances():
    """Outcomes as prepare (or a merge) feeds them: a skipped utterance does not count."""
    from runtime.config import load_config
    from tokenizer.prepare import _Tally, summary_line

    conf = load_config(["defaults", "audio", "small"])
    tally = _Tally([])
    for i, p in enumerate(_placed()):
        tally.add({"i": i, "path": f"synth:{i}", "split": p.split, "speaker": p.speaker, "seconds": 1.0, "band_bins": 80,
                   "notes": [], "timbre": p.timbre, "language": p.language, "text": p.text})
    tally.add({"i": 99, "path": "synth:99", "reason": "eSpeak NG produced no sound"})
    listing = {"utterances": 8, "speakers": 6, "split_mode": "timbre", "skipped": [], "units": 4}
    manifest = tally.manifest(conf, listing, 1.0)
    assert manifest["disjoint"] == disjointness(_placed())
    assert "timbre" in manifest["split_note"] and manifest["splits"]["test"]["utterances"] == 3
    lines = summary_line(manifest, "m.json").splitlines()
    assert lines[0].startswith("prepare: 7 utterances") and lines[1] == disjointness_line(manifest["disjoint"])
