import re
from pathlib import Path

import pytest

from runtime.config import ConfigError, load_config, parse_args


def test_sections_merge_in_order_and_overrides_keep_types():
    conf = load_config(["defaults", "audio", "tiny"], ["--vq_steps", "1e3", "--vq_lr=0.5", "--vq_ema", "false",
                                                       "--synth_languages", "en,de", "--data_dir", "/tmp/x"])
    assert conf.vq_steps == 1000 and isinstance(conf.vq_steps, int)
    assert conf.vq_lr == 0.5 and conf.vq_ema is False
    assert conf.synth_languages == ["en", "de"]
    assert conf.data_dir == "/tmp/x"
    assert conf.synth_minutes == 0.5  # from the tiny section, merged after defaults
    assert conf.configs == ["defaults", "audio", "tiny"]


def test_unknown_key_names_the_nearest_known_ones():
    with pytest.raises(ConfigError, match="unknown config key 'vq_stpes'.*'vq_steps'"):
        load_config(["defaults"], ["--vq_stpes", "3"])


def test_unknown_section_names_the_nearest_known_ones():
    with pytest.raises(ConfigError, match="unknown config section 'tinny'.*'tiny'"):
        load_config(["defaults", "tinny"])


def test_bad_value_names_key_and_type():
    with pytest.raises(ConfigError, match="--vq_steps 'ten': cannot be read as int"):
        load_config(["defaults"], ["--vq_steps", "ten"])
    with pytest.raises(ConfigError, match="needs a value"):
        load_config(["defaults"], ["--vq_steps"])


def test_unknown_key_in_a_section_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("defaults:\n  a: 1\nextra:\n  b: 2\n")
    with pytest.raises(ConfigError, match="section 'extra': unknown config key 'b'"):
        load_config(["defaults", "extra"], path=path)


def test_a_combined_section_applies_only_when_all_its_parts_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("defaults:\n  n: 1\n  m: 0\nsmall:\n  n: 2\nmel:\n  m: 5\nsmall+mel:\n  n: 3\n")
    assert load_config(["defaults", "small"], path=path).n == 2
    assert load_config(["defaults", "mel"], path=path).n == 1  # the model alone keeps the size's default
    both = load_config(["defaults", "mel", "small"], path=path)
    assert (both.n, both.m) == (3, 5)  # after every named section, whatever their order
    assert load_config(["defaults", "small", "mel"], ["--n", "7"], path=path).n == 7  # the command line still wins
    path.write_text("defaults:\n  n: 1\nsmall:\n  n: 2\nsmall+mle:\n  n: 3\n")
    with pytest.raises(ConfigError, match="section 'small\\+mle': unknown config section 'mle'"):
        load_config(["defaults", "small"], path=path)


def test_the_shipped_small_budget_differs_per_world_model():
    """`small` is a 30-minute CPU demo: the models that train slower per step get fewer steps there, and
    only there (the GPU size keeps its own)."""
    small = load_config(["defaults", "audio", "small"]).n_steps
    for model in ("maskgit", "mel"):
        assert load_config(["defaults", "audio", "small", model]).n_steps < small
        assert load_config(["defaults", "audio", model]).n_steps == load_config(["defaults", "audio"]).n_steps


def test_cli_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--configs", "defaults", "--no_such_key", "1"])
    assert e.value.code == 2
    assert "unknown config key 'no_such_key'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--batch_size", "-3"], "'batch_size' = -3: must be a positive whole number"),
    (["--split_fractions", "0.6,0.2"], "three fractions"),
    (["--kl_balance", "1.5"], "must lie in"),
    (["--world_model", "gru"], "must be one of rssm, transformer"),
    (["--device", "tpu"], "expected auto, cpu, cuda"),
    (["--source", "folder"], "needs --data_root"),
    (["--source", "folder", "--data_root", "/no/such/dir"], "is not a folder"),
    (["--speaker_regex", "^abc"], "needs a group"),
])
def test_bad_values_are_refused_at_load_naming_the_key(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["defaults", "audio", "tiny"], args)


def test_a_data_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        load_config(["defaults"], ["--data_dir", str(tmp_path / "f")])


def test_list_elements_keep_their_type_in_the_comma_form():
    conf = load_config(["defaults"], ["--split_fractions", "0.6,0.2,0.2"])
    assert conf.split_fractions == [0.6, 0.2, 0.2] and all(isinstance(x, float) for x in conf.split_fractions)


def test_launch_refuses_a_bad_config_with_exit_2_and_writes_nothing(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "launch.py"), "--configs", "defaults", "tiny", "--batch_size", "-3",
                          "--mlflow_dir", str(tmp_path / "mlruns"), "--data_dir", str(tmp_path / "tok")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "batch_size" in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_readme_documents_every_config_key():
    """The README's configuration reference is generated from defaults.yaml's comments; it must be current."""
    from runtime.config_reference import REFERENCE_END, REFERENCE_START, reference_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert REFERENCE_START in readme, "README.md has no configuration reference block"
    block = readme.split(REFERENCE_START, 1)[1].split(REFERENCE_END, 1)[0].strip()
    assert block == reference_markdown().strip(), \
        "README.md's configuration reference is stale: run python -m runtime.config_reference --update README.md"


def test_a_key_without_a_comment_fails_the_reference(tmp_path):
    from runtime.config import ConfigError
    from runtime.config_reference import reference_markdown

    path = tmp_path / "conf.yaml"
    path.write_text("defaults:\n  # ---- sizes ----\n  batch_size: 8    # sequences per batch\n  mystery: 3\n")
    with pytest.raises(ConfigError, match="'mystery' has no comment"):
        reference_markdown(path)
    path.write_text("defaults:\n  # ---- sizes ----\n  batch_size: 8    # sequences per batch | or fewer\n")
    assert "| `batch_size` | `8` | sequences per batch \\| or fewer |" in reference_markdown(path)


def test_launch_help_lists_every_config_key_grouped_with_its_default_and_meaning():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "launch.py"), "--help"], capture_output=True, text=True,
                         timeout=60, env={**__import__("os").environ, "COLUMNS": "100"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "VQ-VAE tokenizer:" in text and "world model and learner:" in text  # the YAML's groups
    assert re.search(r"--vq_steps 3000 +VQ-VAE training steps", text)
    assert re.search(r"--run_name '' +MLflow run name", text)
    assert re.search(r"^  contrastive +Train the latent with InfoNCE", text, re.M)  # the sections --configs merges
    from runtime.config import load_sections

    assert all(f"--{key} " in text for key in load_sections()["defaults"])


def test_the_tokenizers_help_imports_neither_torch_nor_mlflow():
    """`python -m tokenizer --help` took 7.4 s importing both before it printed a line."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "tokenizer", "--help"], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--codebook_size 1024" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not {"torch", "mlflow"} & imported


@pytest.mark.parametrize("module, heavy, says", [
    ("pydreamer.train", {"torch"}, "--batch_size 32"), ("pydreamer.generator", {"torch", "gymnasium"}, "--batch_size 32"),
    ("pydreamer.dream", {"torch", "scipy", "mlflow"}, "--dream_seconds"),
    ("pydreamer.evaluate", {"torch", "mlflow"}, "--evaluate_horizons"),
    ("pydreamer.compare", {"torch"}, "--runs"), ("wavegan", {"torch", "mlflow"}, "--wavegan_steps")])
def test_a_commands_help_imports_nothing_heavy(module, heavy, says):
    """`python -m pydreamer.train --help` took 3.5-5 s importing torch (the generator: torch and gymnasium; dream
    and evaluate 3.6 s, wavegan 2.7 s) before it printed a line; they are imported where the work starts."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and says in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not heavy & imported


def test_the_learners_exit_codes_are_the_loops():
    """pydreamer/train.py names the learner's exit codes without importing its loop (and torch) for --help."""
    from pydreamer import train
    from pydreamer.learner import loop

    assert (train.EXIT_NONFINITE, train.EXIT_CANNOT_SAVE, train.EXIT_INTERRUPTED) == \
        (loop.EXIT_NONFINITE, loop.EXIT_CANNOT_SAVE, loop.EXIT_INTERRUPTED)


@pytest.mark.parametrize("module", ["pydreamer.train", "pydreamer.generator"])
def test_a_commands_help_says_all_its_docstring_and_its_keys(module, capsys, monkeypatch):
    import importlib

    monkeypatch.setenv("COLUMNS", "100")
    mod = importlib.import_module(module)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert " ".join(mod.__doc__.split()) in " ".join(out.split())  # all of it: not cut mid-sentence
    assert "--batch_size 32" in out and "sequences per training batch" in out


def test_help_keeps_indented_blocks_and_wraps_prose():
    import argparse

    from runtime.config_reference import HelpFormatter

    parser = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter,
                                     description="one two three\nfour five.\n\n    python x --a 1\n    python x --b 2")
    parser.add_argument("--n", type=int, default=3, help="how many")
    text = parser.format_help()
    assert "one two three four five." in text and "    python x --a 1\n    python x --b 2" in text
    assert "how many (default: 3)" in text
