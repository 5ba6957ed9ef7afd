"""blat_contract.config: strict typed configs from dicts, their inverse, and env-var overrides."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest

from blat_contract.audio import FrontEndConfig
from blat_contract.config import ConfigError, apply_env, from_dict, load_json, to_dict


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    sizes: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    extra: dict | None = None


def test_unknown_key_error_names_it_and_lists_known_keys():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"name": "x", "nmae": "y"})
    msg = str(e.value)
    assert "nmae" in msg
    for known in ("name", "inner", "maybe", "extra"):
        assert known in msg


def test_unknown_key_in_nested_section_names_the_path():
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, {"name": "x", "inner": {"rate": 2, "bogus": 1}})
    msg = str(e.value)
    assert "Outer.inner" in msg and "bogus" in msg and "sizes" in msg


def test_nested_dataclasses_and_tuples_are_converted():
    cfg = from_dict(Outer, {"name": "x", "inner": {"rate": 3, "sizes": [4, 5, 6]}, "maybe": {"sizes": [7]}})
    assert isinstance(cfg.inner, Inner) and isinstance(cfg.maybe, Inner)
    assert cfg.inner.sizes == (4, 5, 6) and isinstance(cfg.inner.sizes, tuple)
    assert cfg.inner.rate == 3.0 and isinstance(cfg.inner.rate, float)  # int promoted to float
    assert cfg.maybe == Inner(sizes=(7,))
    assert from_dict(Outer, {"name": "x", "maybe": None}).maybe is None
    # A frozen dataclass holding lists would be unhashable: the tuple conversion keeps it hashable.
    hash(cfg)


def test_nested_section_must_be_an_object():
    with pytest.raises(ConfigError, match="expected an object"):
        from_dict(Outer, {"name": "x", "inner": [1, 2]})


def test_missing_required_field_is_a_config_error():
    with pytest.raises(ConfigError, match="name"):
        from_dict(Outer, {})


def test_post_init_validation_still_runs():
    with pytest.raises(ValueError, match="win_length"):
        from_dict(FrontEndConfig, {"win_length": 2048})


def test_to_dict_round_trip_is_json_ready():
    cfg = Outer("x", Inner(2.5, (3, 4)), Inner(), {"a": [1, 2]})
    d = to_dict(cfg)
    assert d["inner"]["sizes"] == [3, 4]  # tuples become lists
    assert json.loads(json.dumps(d)) == d
    assert from_dict(Outer, d) == cfg


def test_round_trip_of_real_model_configs():
    from blat.config import config_from_dict, config_to_dict
    from blat.models import get_model_config, list_models

    for name in list_models():
        cfg = get_model_config(name)
        assert config_from_dict(config_to_dict(cfg)) == cfg, name


def test_load_json_reports_the_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"name": "a", "inner": {"sizes": [9]}}))
    assert load_json(Outer, p) == Outer("a", Inner(sizes=(9,)))
    p.write_text(json.dumps({"name": "a", "oops": 1}))
    with pytest.raises(ConfigError, match=str(p).replace(".", r"\.")):
        load_json(Outer, p)


def test_apply_env_top_level_and_sections():
    data = {"name": "x", "inner": {"rate": 1.0, "sizes": [1, 2]}}
    env = {
        "APP_NAME": "plain text",  # not JSON: kept as a string
        "APP_INNER__RATE": "0.25",  # JSON number
        "APP_INNER__SIZES": "[8, 16]",  # JSON list
        "APP_MAYBE__SIZES": "[3]",  # a section not in the data is created
        "OTHER_NAME": "ignored",
        "APPNAME": "also ignored",  # prefix includes the underscore
    }
    out = apply_env(data, "APP_", env)
    assert out == {"name": "plain text", "inner": {"rate": 0.25, "sizes": [8, 16]}, "maybe": {"sizes": [3]}}
    assert data == {"name": "x", "inner": {"rate": 1.0, "sizes": [1, 2]}}  # input untouched
    cfg = from_dict(Outer, out)
    assert cfg.inner == Inner(0.25, (8, 16)) and cfg.maybe == Inner(sizes=(3,))


def test_apply_env_json_decoding_of_scalars():
    env = {"P_A": "true", "P_B": "null", "P_C": "7", "P_D": '"7"', "P_E": '{"k": 1}'}
    assert apply_env({}, "P_", env) == {"a": True, "b": None, "c": 7, "d": "7", "e": {"k": 1}}


def test_apply_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("BLATTEST_FRONTEND__N_MELS", "32")
    from blat.config import AudioEncoderConfig

    base = to_dict(AudioEncoderConfig(channels=(4, 8)))
    cfg = from_dict(AudioEncoderConfig, apply_env(base, "BLATTEST_"))
    assert cfg.frontend.n_mels == 32 and cfg.channels == (4, 8)


def test_apply_env_then_from_dict_catches_typos():
    with pytest.raises(ConfigError, match="hop_lenght"):
        from_dict(FrontEndConfig, apply_env(to_dict(FrontEndConfig()), "FE_", {"FE_HOP_LENGHT": "160"}))
    ok = from_dict(FrontEndConfig, apply_env(to_dict(FrontEndConfig()), "FE_", {"FE_HOP_LENGTH": "160"}))
    assert ok == dataclasses.replace(FrontEndConfig(), hop_length=160)
