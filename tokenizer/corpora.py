"""Corpora: what utterances exist and who speaks them, before any audio is decoded.

Listing is cheap (file names and metadata tables only), so the speaker-disjoint split can
be decided before the slow decoding streams through the corpus. Listing is also the one place
that knows each utterance's conditioning labels (string name -> string value: the built-in
corpus' language, voice and kind; Common Voice's speaker, gender, age, accent; a folder's
speaker), which the stages after it carry along as `label_<name>` arrays. Problems found while
listing (a missing clip, an unreadable folder, a malformed row) are returned as skipped
entries with their reason; they never stop the listing.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from tokenizer.audio_io import AUDIO_EXTENSIONS

SOURCES = ("synth", "commonvoice", "folder")
SPEAKER_RULES = ("parent", "top", "regex")  # a folder corpus: who speaks a file (see list_folder)


@dataclass(frozen=True)
class UtteranceSource:
    """Where one utterance comes from: a file, or a synthesis recipe."""

    utterance_id: str
    speaker: str
    path: str = ""            # the audio file ('' for synthesized utterances)
    synth: Optional[Any] = None  # tokenizer.synth.SynthUtterance for the built-in corpus
    labels: tuple[tuple[str, str], ...] = ()  # (name, value) pairs sorted by name, values non-empty

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def make_labels(**values: str) -> tuple[tuple[str, str], ...]:
    """Conditioning labels as UtteranceSource keeps them (hashable): sorted, empty values left out."""
    return tuple(sorted((k, str(v).strip()) for k, v in values.items() if str(v or "").strip()))


def label_names(records: Iterable[UtteranceSource]) -> list[str]:
    """Every label name any utterance of the corpus has, sorted: the `label_*` arrays its shards hold."""
    return sorted({name for r in records for name, _ in r.labels})


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


class CorpusError(Exception):
    """The corpus as configured cannot be read at all (one clear message, no traceback)."""


def _safe_id(text: str) -> str:
    """A file-name-safe id that keeps letters of any script readable (Cyrillic, Chinese...): only separators,
    punctuation and control characters become `_`."""
    return re.sub(r"[^\w.+-]+", "_", text).strip("_") or "utt"


def unique_ids(records: list[UtteranceSource]) -> list[UtteranceSource]:
    """Utterance ids unique by construction: an id that sanitizes to the same text as another's (two names
    that differ only in punctuation, say) gets 8 hex digits of a hash of its path (of its position, for an
    utterance listed twice), so no two utterances share an id and so a split."""
    counts = Counter(r.utterance_id for r in records)
    taken: set[str] = {r.utterance_id for r in records if counts[r.utterance_id] == 1}
    out = []
    for i, r in enumerate(records):
        if counts[r.utterance_id] > 1:
            uid, salt = r.utterance_id, r.path or str(i)
            while uid in taken or uid == r.utterance_id:
                uid = f"{r.utterance_id}-{hashlib.sha1(salt.encode()).hexdigest()[:8]}"
                salt += f"#{i}"
            r = replace(r, utterance_id=uid)
        taken.add(r.utterance_id)
        out.append(r)
    return out


def list_corpus(conf: Mapping[str, Any]) -> tuple[list[UtteranceSource], list[Skipped]]:
    """Every utterance of the configured source (ids unique: `unique_ids`) and what was skipped while listing."""
    records, skipped = _list_source(conf)
    return unique_ids(records), skipped


def _list_source(conf: Mapping[str, Any]) -> tuple[list[UtteranceSource], list[Skipped]]:
    source = conf["source"]
    if source == "synth":
        from tokenizer.synth import plan_synth_corpus, timbre_of

        plan = plan_synth_corpus(conf)
        return [UtteranceSource(u.utterance_id, u.speaker, "", u,
                                make_labels(language=u.language, voice=timbre_of(u.speaker), kind=u.kind))
                for u in plan], []
    root = Path(conf["data_root"] or "")
    if not conf["data_root"]:
        raise CorpusError(f"source '{source}' needs --data_root (the folder to read)")
    if not root.is_dir():
        raise CorpusError(f"data_root {root} is not a folder")
    if source == "commonvoice":
        return list_commonvoice(root)
    if source == "folder":
        return list_folder(root, conf["speaker_rule"], conf["speaker_regex"])
    raise CorpusError(f"unknown source '{source}'; expected one of {', '.join(SOURCES)}")


# ---- Common Voice ------------------------------------------------------------------------

OFFICIAL_TABLE = "validated.tsv"
KAGGLE_TABLES = ("cv-valid-train.csv", "cv-valid-dev.csv", "cv-valid-test.csv")


def list_commonvoice(root: Path) -> tuple[list[UtteranceSource], list[Skipped]]:
    """Validated clips only: `validated.tsv` + `clips/`, or the Kaggle v4 `cv-valid-*.csv` layout.

    `invalidated.tsv`, `other.tsv`, `cv-invalid*` and `cv-other-*` are never read.
    """
    if (root / OFFICIAL_TABLE).is_file():
        return _read_table(root / OFFICIAL_TABLE, "\t", "path", lambda name: [root / "clips" / name])
    tables = [root / t for t in KAGGLE_TABLES if (root / t).is_file()]
    if not tables:
        raise CorpusError(
            f"{root} is not a Common Voice folder: expected {OFFICIAL_TABLE} (with clips/) "
            f"or {', '.join(KAGGLE_TABLES)}"
        )
    records: list[UtteranceSource] = []
    skipped: list[Skipped] = []
    for table in tables:
        # Kaggle archives unpack to cv-valid-train/cv-valid-train/sample-*.mp3 as often as one level.
        def candidates(name: str, table=table) -> list[Path]:
            return [root / name, root / table.stem / name, root / table.stem / Path(name).name]

        r, s = _read_table(table, ",", "filename", candidates)
        records += r
        skipped += s
    return records, skipped


def _read_table(table: Path, delimiter: str, file_column: str, candidates) -> tuple[list[UtteranceSource], list[Skipped]]:
    records: list[UtteranceSource] = []
    skipped: list[Skipped] = []
    try:
        with open(table, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
            if not reader.fieldnames or file_column not in reader.fieldnames:
                raise CorpusError(f"{table}: has no '{file_column}' column (columns: {reader.fieldnames})")
            for line, row in enumerate(reader, start=2):
                name = (row.get(file_column) or "").strip()
                if not name:
                    skipped.append(Skipped(f"{table}:{line}", f"row has no '{file_column}'"))
                    continue
                path = next((p for p in candidates(name) if p.is_file()), None)
                if path is None:
                    skipped.append(Skipped(str(candidates(name)[0]), f"clip listed in {table.name} is missing"))
                    continue
                uid = _safe_id(Path(name).with_suffix("").as_posix())
                # Without a client_id every clip is its own speaker; the split then says it is utterance-level.
                client = (row.get("client_id") or "").strip()
                speaker = client or f"unknown:{uid}"
                records.append(UtteranceSource(uid, speaker, str(path), labels=_commonvoice_labels(row, client)))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CorpusError(f"cannot read {table}: {e}") from None
    return records, skipped


def _commonvoice_labels(row: Mapping[str, Any], client: str) -> tuple[tuple[str, str], ...]:
    """speaker (a clip without a client_id has none: one value per clip conditions on nothing), and the
    gender, age and accent columns where the table has them (newer releases call accent `accents`)."""
    cell = lambda key: (row.get(key) or "").strip()  # noqa: E731
    return make_labels(speaker=client, gender=cell("gender"), age=cell("age"), accent=cell("accents") or cell("accent"))


# ---- any folder ----------------------------------------------------------------------------


def list_folder(root: Path, speaker_rule: str = "parent", speaker_regex: str = "") -> tuple[list[UtteranceSource], list[Skipped]]:
    """Every wav/flac/ogg/mp3 under `root`, recursively; speaker from the parent folder (`parent`), the first
    folder below `root` (`top`: LibriSpeech's `<speaker>/<chapter>/`), or a regex on the file name."""
    if speaker_rule not in SPEAKER_RULES:
        raise CorpusError(f"speaker_rule '{speaker_rule}' is not one of {', '.join(SPEAKER_RULES)}")
    pattern = None
    if speaker_rule == "regex":
        try:
            pattern = re.compile(speaker_regex)
        except re.error as e:
            raise CorpusError(f"speaker_regex {speaker_regex!r} is not a valid regular expression: {e}") from None
    skipped: list[Skipped] = []
    records: list[UtteranceSource] = []

    def unreadable(err: OSError) -> None:
        skipped.append(Skipped(str(err.filename), f"unreadable folder: {err.strerror or err}"))

    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=False):
        dirs.sort()
        for name in dirs:
            if Path(name).suffix.lower() in AUDIO_EXTENSIONS:  # said, so it is not passed over without a word
                skipped.append(Skipped(str(Path(folder) / name),
                                       "a folder named like an audio file, not a file (audio inside it is still read)"))
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            rel = path.relative_to(root)
            if pattern is not None:
                m = pattern.search(path.stem)
                if not m:
                    skipped.append(Skipped(str(path), f"file name does not match speaker_regex {speaker_regex!r}"))
                    continue
                speaker = m.group(1) if m.groups() else m.group(0)
            elif rel.parent == Path("."):
                speaker = root.name
            else:
                speaker = rel.parts[0] if speaker_rule == "top" else rel.parent.as_posix()
            records.append(UtteranceSource(_safe_id(rel.with_suffix("").as_posix()), speaker, str(path),
                                           labels=make_labels(speaker=speaker)))
    return records, skipped
