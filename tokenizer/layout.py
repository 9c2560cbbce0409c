"""Where each tokenizer stage writes inside `data_dir`, in one place."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizer.split import SPLITS


@dataclass(frozen=True)
class DataLayout:
    root: Path
    origin: str | None = field(default=None, compare=False)  # the bucket URL when `root` is this host's copy of it

    @classmethod
    def of(cls, data_dir: str | Path, origin: str | None = None) -> "DataLayout":
        return cls(Path(data_dir), origin)

    @property
    def data_dir_arg(self) -> str:
        """What to pass as --data_dir to reach this data folder again (the bucket, not the copy)."""
        return self.show(self.root)

    def show(self, path: Path) -> str:
        """A path inside this data folder as the user knows it: in the bucket, for a copy of one."""
        if self.origin is None:
            return str(path)
        rel = Path(path).relative_to(self.root).as_posix()
        return self.origin if rel == "." else f"{self.origin.rstrip('/')}/{rel}"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def mels(self, split: str) -> Path:
        return self.root / "mels" / split

    def tokens(self, split: str) -> Path:
        return self.root / "tokens" / split

    @property
    def token_meta(self) -> Path:
        return self.root / "tokens" / "meta.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def vqvae(self) -> Path:
        return self.tokenizer_dir / "vqvae.pt"

    @property
    def metrics(self) -> Path:
        return self.tokenizer_dir / "metrics.json"

    @property
    def examples(self) -> Path:
        return self.tokenizer_dir / "examples"

    def settings(self, stage: str) -> Path:
        """The settings a stage's output was made with (written when the stage finishes)."""
        return self.root / "settings" / f"{stage}.json"

    @property
    def stages_lease(self) -> Path:
        """Held while stages write this folder (runtime/lease.py): a second writer is refused, not interleaved."""
        return self.root / "stages.lock"

    def parts(self, stage: str) -> Path:
        """Worker parts of a stage run on several hosts (`--worker i --n_workers N`), one folder
        `w{i}of{N}` each, until `python -m tokenizer merge` assembles them (and removes this folder)."""
        return self.root / "parts" / stage

    def has_tokens(self) -> bool:
        return self.token_meta.is_file() and all(self.tokens(s).is_dir() for s in SPLITS)
