"""Typed per-stage configs: defaults, YAML overrides, unknown keys fail naming the key."""

import pytest

from monitor.config import (BandConfig, ConfigError, FbankConfig, Preprocess, SegmentConfig, diff_from_defaults,
                            from_dict, load_yaml)


def test_defaults_and_override():
    p = Preprocess.from_dict({"band": {"high_hz": 3000}, "segment": {"window_s": 5}})
    assert p.band == BandConfig(low_hz=None, high_hz=3000.0, order=6)
    assert p.segment.window_s == 5.0 and p.segment.hop_s == 10.0
    assert p.fbank == FbankConfig()
    assert diff_from_defaults(p) == {"segment": {"window_s": 5.0}, "band": {"high_hz": 3000.0}}
    assert Preprocess.from_dict(p.to_dict()) == p


def test_unknown_keys_fail_with_the_key_named():
    with pytest.raises(ConfigError, match="unknown config key 'preprocessing.band.hihg_hz'"):
        Preprocess.from_dict({"band": {"hihg_hz": 3000}})
    with pytest.raises(ConfigError, match="unknown config key 'preprocessing.bands'"):
        Preprocess.from_dict({"bands": {}})


def test_bad_values_fail_in_one_line():
    for data, msg in [({"window_s": "ten"}, "window_s must be a number"), ({"window_s": -1}, "window_s must be > 0"),
                      ({"min_segment_s": 20}, "min_segment_s")]:
        with pytest.raises(ConfigError, match=msg) as e:
            from_dict(SegmentConfig, data, "segment")
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="below"):
        BandConfig(low_hz=3000, high_hz=1000)


def test_yaml_loading(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("band:\n  high_hz: 3000\n")
    assert Preprocess.from_dict(load_yaml(p)).band.high_hz == 3000
    p.write_text("band: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_yaml_overrides_only_what_differs_and_types_are_checked(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("segment:\n  hop_s: 5\nfbank:\n  remove_wave_mean: false\n  target_frames: 512.0\n")
    pre = Preprocess.from_dict(load_yaml(p))
    assert pre.segment == SegmentConfig(hop_s=5.0) and pre.fbank.target_frames == 512
    assert diff_from_defaults(pre) == {"segment": {"hop_s": 5.0}, "fbank": {"remove_wave_mean": False, "target_frames": 512}}
    for text, msg in [("fbank:\n  remove_wave_mean: 1\n", "fbank.remove_wave_mean must be true or false"),
                      ("fbank:\n  target_frames: 1.5\n", "fbank.target_frames must be an integer"),
                      ("- 1\n- 2\n", "top level must be a mapping")]:
        p.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            Preprocess.from_dict(load_yaml(p))
    p.write_text("")
    assert Preprocess.from_dict(load_yaml(p)) == Preprocess()


def test_band_above_nyquist_fails_once_for_the_run():
    with pytest.raises(ConfigError, match="Nyquist"):
        Preprocess.from_dict({"band": {"low_hz": 9000}})
