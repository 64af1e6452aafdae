"""Experiment config: precedence, dotted overrides, one-line errors naming the key."""

import pytest

from pointtune.config import ConfigError, build_config, config_from_file, parse_override


def test_defaults_recipe_and_overrides():
    exp = build_config("cedr")
    assert exp.method.name == "cedr" and exp.method.lambda_con.start == pytest.approx(0.1)
    exp = build_config("cedr", {"optim": {"lr": 0.05}}, {"optim.lr": 0.02, "method.backbone.k": 10})
    assert exp.optim.lr.start == pytest.approx(0.02)
    assert exp.method.backbone.kwargs() == {"k": 10}


def test_parse_override_uses_yaml_values():
    assert parse_override("data.classes=[airplane, bench]") == ("data.classes", ["airplane", "bench"])
    assert parse_override("method.use_eaa=false") == ("method.use_eaa", False)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("optim.lr")


@pytest.mark.parametrize("key,value,match", [
    ("optim.lrr", 0.1, "optim.lrr"),
    ("method.temperature", 0.0, "method.temperature"),
    ("train.epochs", "many", "train.epochs"),
    ("data.sampling", "poisson", "data.sampling"),
])
def test_bad_keys_and_values_are_named(key, value, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_config("cedr", overrides={key: value}, source="--set")
    assert "\n" not in str(info.value)


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        build_config("nope")


def test_config_file_round_trip(tmp_path):
    exp = build_config("cedr", overrides={"optim.lr": 0.03, "method.use_cpcm": False})
    path = tmp_path / "best.yaml"
    import yaml

    path.write_text(yaml.safe_dump(exp.to_dict()))
    again = config_from_file("cedr", path)
    assert again.to_dict() == exp.to_dict()
    assert again.method.lambda_con == exp.method.lambda_con and again.method.use_cpcm is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        config_from_file("cedr", bad)
