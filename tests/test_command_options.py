"""The dream command's options (named as the run's config keys, defaults shown), where an ad-hoc dream goes and under
which metric names, the run's config as its last resume left it, and the bounded progress of evaluate and dream.
Fast: no model, no tracking store (the whole command on a tiny run is tests/test_dream.py)."""
from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from pydreamer.dreams.options import CONFIG_DEFAULTS, destination
from pydreamer.progress import Progress
from pydreamer.runs import RunError


def _parser():
    from pydreamer.dreams.command import build_parser

    return build_parser()


def _entries(help_text: str) -> dict[str, str]:
    """--flag -> its help, on one line."""
    return {entry.split()[0].rstrip(","): " ".join(entry.split())
            for entry in re.split(r"\n(?=  -)", help_text.split("options:", 1)[1]) if entry.strip()}


def test_dreams_options_are_the_config_keys_and_the_old_names_still_work():
    p = _parser()
    a = p.parse_args(["--run", "r", "--dream_seconds", "2", "--samples", "3", "--no-end", "--dream_warm", "0"])
    assert (a.seconds, a.samples, a.end, a.warm) == (2.0, 3, False, 0)
    b = p.parse_args(["--run", "r", "--seconds", "2", "--dream_samples", "3", "--no-dream_end", "--warm", "0"])
    assert vars(a) == vars(b)
    entries = _entries(p.format_help())
    for dest, key in CONFIG_DEFAULTS.items():
        assert f"(default: the run's {key})" in entries[f"--{key}"], key
        if dest != key:
            assert f"--{dest}" not in entries  # the old name: accepted, not listed
    for flag, text in entries.items():  # every option says its default (a switch's is off)
        assert "default" in text or flag in ("-h", "--run", "--as_run_dreams", "--no_log"), text


def _run(tmp_path: Path, metrics=()):
    artifacts = tmp_path / "artifacts"
    return SimpleNamespace(info=SimpleNamespace(artifact_uri=artifacts.as_uri(), run_id="r"),
                           data=SimpleNamespace(metrics=dict.fromkeys(metrics, 1.0))), artifacts / "dreams"


def _args(**given):
    return argparse.Namespace(**{"run": "r", "out": None, "name": None, "as_run_dreams": False, "no_log": False,
                                 **given})


def test_an_ad_hoc_dream_has_its_own_folder_and_metric_names_and_launchs_are_the_runs_own(tmp_path):
    run, own = _run(tmp_path, ["dream/realtime_factor", "dreams/old/realtime_factor"])
    measured = {"dream/realtime_factor": 0.5, "dream/unconditional/rms/ks_stat": 0.2, "tokenizer/roundtrip/stoi": 0.9}
    launchs = destination(_args(as_run_dreams=True), run, tmp_path / "replay")
    assert (launchs.out, launchs.artifacts, launchs.metrics(measured)) == (own, "dreams", measured)
    mine = destination(_args(name="mine"), run, tmp_path / "replay")
    assert (mine.out, mine.artifacts) == (own / "mine", "dreams/mine")
    assert mine.metrics(measured) == {"dreams/mine/realtime_factor": 0.5, "dreams/mine/unconditional/rms/ks_stat": 0.2,
                                      "dreams/mine/tokenizer/roundtrip/stoi": 0.9}  # never a dream/* key
    stamped = destination(_args(), run, tmp_path / "replay")
    assert re.fullmatch(r"\d{8}-\d{6}", stamped.name) and stamped.out == own / stamped.name
    elsewhere = destination(_args(name="x", out=str(tmp_path / "here")), run, tmp_path / "replay")
    assert (elsewhere.out, elsewhere.artifacts) == (tmp_path / "here", "dreams/x")


@pytest.mark.parametrize("given, said", [
    ({"name": "a/b"}, "--name 'a/b': up to 64 letters"),
    ({"no_log": True}, "--no_log logs nothing into the run: give --out DIR"),
    ({"out": "OWN"}, "is the run's own dreams folder"),
    ({"name": "old"}, "already has dreams of that name (metrics dreams/old/*)"),
    ({"name": "there"}, "already exists: give another --name"),
])
def test_an_ad_hoc_dream_never_writes_over_the_runs_own_or_an_earlier_one(tmp_path, given, said):
    run, own = _run(tmp_path, ["dream/realtime_factor", "dreams/old/realtime_factor"])
    (own / "there").mkdir(parents=True)
    given = {k: str(own) if v == "OWN" else v for k, v in given.items()}
    with pytest.raises(RunError, match=re.escape(said)):
        destination(_args(**given), run, tmp_path / "replay")


def test_the_runs_config_is_as_its_last_resume_left_it():
    """evaluate and dream read the run's config from its params; what a resume changed lives in a tag (params
    cannot change), so `--dream_seconds 2` at a resume reaches the dreams at the end of the resumed run."""
    from pydreamer.resume import RESUMED_TAG
    from pydreamer.runs import RESUMED_TAG as READ, run_config

    run = SimpleNamespace(data=SimpleNamespace(params={"dream_seconds": "4.0", "n_steps": "40"},
                                               tags={RESUMED_TAG: json.dumps({"dream_seconds": 2.0, "n_steps": 80,
                                                                             "not_a_key": 1})}))
    assert READ == RESUMED_TAG
    assert (run_config(run)["dream_seconds"], run_config(run)["n_steps"]) == (4.0, 40)  # the params: what resume compares
    resumed = run_config(run, resumed=True)
    assert (resumed["dream_seconds"], resumed["n_steps"]) == (2.0, 80) and "not_a_key" not in resumed


def test_progress_off_a_terminal_is_a_line_per_tenth_with_the_time_left():
    stream = io.StringIO()
    with Progress("evaluate", 1000, "steps", stream=stream) as progress:
        for _ in range(1000):
            progress.advance()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("evaluate:  10% (100/1000 steps)") and "left" in lines[0]
    assert lines[-1].startswith("evaluate: 100% (1000/1000 steps)")
    quiet = io.StringIO()
    with Progress("dream", 0, "dreams", stream=quiet) as progress:
        progress.advance(0)
    assert quiet.getvalue() == ""  # nothing to do: nothing said


def test_progress_on_a_terminal_is_one_bar_redrawn_in_place():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress("dream", 20, "dreams", stream=stream) as progress:
        for _ in range(20):
            progress.advance()
    text = stream.getvalue()
    assert "20/20" in text and text.count("\n") <= 1
