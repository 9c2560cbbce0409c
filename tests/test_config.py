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


def test_cli_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--configs", "defaults", "--no_such_key", "1"])
    assert e.value.code == 2
    assert "unknown config key 'no_such_key'" in capsys.readouterr().err
