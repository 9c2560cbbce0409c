import os

import pytest

from audio_fixtures import write_clip
from tokenizer.corpora import CorpusError, label_names, list_commonvoice, list_corpus, list_folder


def _official(root, rows):
    lines = ["client_id\tpath\tsentence\tup_votes"] + [f"{c}\t{p}\tsay it\t2" for c, p in rows]
    root.mkdir(parents=True, exist_ok=True)
    (root / "validated.tsv").write_text("\n".join(lines) + "\n")
    (root / "invalidated.tsv").write_text("client_id\tpath\nbad\tnever.mp3\n")
    (root / "other.tsv").write_text("client_id\tpath\nbad\tnever2.mp3\n")


def test_official_layout_validated_only_and_missing_clips_named(tmp_path):
    root = tmp_path / "cv"
    for i in range(3):
        write_clip(root / "clips" / f"c{i}.mp3", seconds=0.5, seed=i, fmt="MP3")
    write_clip(root / "clips" / "never.mp3", seconds=0.5, fmt="MP3")
    _official(root, [("alice", "c0.mp3"), ("bob", "c1.mp3"), ("bob", "c2.mp3"), ("carol", "gone.mp3")])
    records, skipped = list_commonvoice(root)
    assert sorted(r.speaker for r in records) == ["alice", "bob", "bob"]
    assert all("never" not in r.path for r in records)
    assert len(skipped) == 1 and "gone.mp3" in skipped[0].path and "missing" in skipped[0].reason


def test_kaggle_layout_with_nested_folders_and_no_client_id(tmp_path):
    root = tmp_path / "cv4"
    write_clip(root / "cv-valid-train" / "cv-valid-train" / "sample-000000.mp3", seconds=0.5, fmt="MP3")
    write_clip(root / "cv-valid-dev" / "sample-000001.mp3", seconds=0.5, fmt="MP3")
    write_clip(root / "cv-other-train" / "sample-000002.mp3", seconds=0.5, fmt="MP3")
    (root / "cv-valid-train.csv").write_text("filename,text,up_votes\ncv-valid-train/sample-000000.mp3,hi,1\n")
    (root / "cv-valid-dev.csv").write_text("filename,text,up_votes\ncv-valid-dev/sample-000001.mp3,hi,1\ncv-valid-dev/nope.mp3,x,1\n")
    (root / "cv-other-train.csv").write_text("filename,text\ncv-other-train/sample-000002.mp3,hi\n")
    records, skipped = list_commonvoice(root)
    assert len(records) == 2 and all("other" not in r.path for r in records)
    assert len({r.speaker for r in records}) == 2  # unknown speakers: one per clip
    assert len(skipped) == 1 and "missing" in skipped[0].reason


def test_not_a_commonvoice_folder(tmp_path):
    with pytest.raises(CorpusError, match="validated.tsv"):
        list_commonvoice(tmp_path)


def test_folder_speakers_by_parent_or_regex(tmp_path):
    write_clip(tmp_path / "anna" / "x.wav", seconds=0.3)
    write_clip(tmp_path / "anna" / "deep" / "y.flac", seconds=0.3, fmt="FLAC")
    write_clip(tmp_path / "ben_01.WAV", seconds=0.3)
    (tmp_path / "readme.txt").write_text("not audio")
    records, _ = list_folder(tmp_path)
    assert {r.speaker for r in records} == {"anna", "anna/deep", tmp_path.name}
    records, skipped = list_folder(tmp_path, "regex", r"^([a-z]+)_")
    assert [r.speaker for r in records] == ["ben"] and len(skipped) == 2  # x, y don't match


def test_unreadable_folder_is_skipped_with_reason(tmp_path, monkeypatch):
    write_clip(tmp_path / "ok" / "a.wav", seconds=0.3)
    (tmp_path / "locked").mkdir()
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    records, skipped = list_folder(tmp_path)
    assert len(records) == 1
    assert any("locked" in s.path and "unreadable folder" in s.reason for s in skipped)


def test_listing_knows_the_conditioning_labels(tmp_path):
    from runtime.config import load_config

    synth = load_config(["defaults", "audio", "tiny"])
    records, _ = list_corpus(synth)
    r = records[0]
    assert r.label_map == {"language": r.synth.language, "voice": r.speaker.partition("+")[2], "kind": r.synth.kind}
    assert label_names(records) == ["kind", "language", "voice"] and hash(r)

    root = tmp_path / "cv"
    for i in range(3):
        write_clip(root / "clips" / f"c{i}.mp3", seconds=0.3, seed=i, fmt="MP3")
    (root / "validated.tsv").write_text("client_id\tpath\tsentence\tage\tgender\taccents\n"
                                        "alice\tc0.mp3\thi\ttwenties\tfemale\tScottish English\n"
                                        "bob\tc1.mp3\thi\t\tmale\t\n")
    records, _ = list_commonvoice(root)
    assert [r.label_map for r in records] == [
        {"speaker": "alice", "age": "twenties", "gender": "female", "accent": "Scottish English"},
        {"speaker": "bob", "gender": "male"}]
    (root / "validated.tsv").write_text("path\tsentence\taccent\nc2.mp3\thi\tus\n")  # no client_id: no speaker
    assert [r.label_map for r in list_commonvoice(root)[0]] == [{"accent": "us"}]

    write_clip(tmp_path / "f" / "anna" / "x.wav", seconds=0.3)
    assert [r.label_map for r in list_folder(tmp_path / "f")[0]] == [{"speaker": "anna"}]


def test_file_names_that_sanitize_alike_keep_unique_readable_ids_and_a_speaker_disjoint_split(tmp_path):
    from tokenizer.split import assign_splits

    names = ["привет мир", "你好", "привет_мир", "a b", "a_b", "a:b"]  # 3 pairs that map to one id each before
    speakers = [f"спикер{k}" for k in range(8)]
    for s in speakers:
        for name in names:
            (tmp_path / s).mkdir(exist_ok=True)
            (tmp_path / s / f"{name}.wav").write_bytes(b"")  # listing reads names only
    conf = {"source": "folder", "data_root": str(tmp_path), "speaker_rule": "parent", "speaker_regex": ""}
    records, _ = list_corpus(conf)
    ids = [r.utterance_id for r in records]
    assert len(ids) == len(set(ids)) == 8 * len(names)  # unique by construction
    assert any("привет" in i for i in ids) and any("你好" in i for i in ids)  # readable, not `utt`
    again, _ = list_corpus(conf)
    assert [r.utterance_id for r in again] == ids  # stable from one listing to the next
    assignment, mode = assign_splits([(r.utterance_id, r.speaker) for r in records], min_speakers=3)
    assert mode == "speaker"
    splits_of = {}
    for r in records:
        splits_of.setdefault(r.speaker, set()).add(assignment[r.utterance_id])
    assert all(len(v) == 1 for v in splits_of.values())  # the manifest's claim holds


def test_librispeech_layout_takes_the_speaker_from_the_top_folder(tmp_path):
    for speaker, chapter in (("19", "198"), ("19", "227"), ("26", "495")):
        (tmp_path / speaker / chapter).mkdir(parents=True)
        (tmp_path / speaker / chapter / f"{speaker}-{chapter}-0001.flac").write_bytes(b"")
    by_parent = {r.speaker for r in list_folder(tmp_path)[0]}
    assert by_parent == {"19/198", "19/227", "26/495"}  # chapters as speakers: the default is wrong here
    assert {r.speaker for r in list_folder(tmp_path, "top")[0]} == {"19", "26"}
