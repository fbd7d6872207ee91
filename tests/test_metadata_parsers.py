"""Recorder metadata parsers on their own: GUANO, AudioMoth comment details, file names, the RIFF walker
on lying or junk files, the GPS-Sync CSV, and fuzzing (nothing may raise)."""

from __future__ import annotations

import json
import struct
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.metadata import read_metadata
from monitor.metadata.audiomoth import format_comment, parse_audiomoth_comment
from monitor.metadata.filenames import parse_filename
from monitor.metadata.gpscsv import parse_gps_csv
from monitor.metadata.guano import parse_guano, parse_guano_text, parse_timestamp
from monitor.metadata.riff import chunk, info_list, walk_riff, write_wav_with_chunks
from monitor.metadata.writer import fixed_text, format_guano

SAMPLES = (np.sin(np.arange(8000) / 5) * 3000).astype("<i2")
C110 = ("Recorded at 01:02:03 04/05/2024 (UTC) by AudioMoth 24E144055E080032 at medium gain while battery was "
        "4.1V and temperature was 20.0C.")


def tz(h: int, m: int = 0) -> timezone:
    return timezone(timedelta(hours=h, minutes=m if h >= 0 else -m))


# ---------------------------------------------------------------- GUANO

@pytest.mark.parametrize("ts,expected,off", [
    ("2024-09-03T19:31:30Z", datetime(2024, 9, 3, 19, 31, 30, tzinfo=timezone.utc), "+00:00"),
    ("2024-09-03T19:31:30+01:00", datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1)), "+01:00"),
    ("2024-09-03T19:31:30+0100", datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1)), "+01:00"),
    ("2024-09-03T19:31:30+1:00", datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1)), "+01:00"),
    ("2024-09-03T19:31:30-05:30", datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(-5, 30)), "-05:30"),
    ("2024-09-03T19:31:30.250-0800", datetime(2024, 9, 3, 19, 31, 30, 250000, tzinfo=tz(-8)), "-08:00"),
    ("2024-09-03 19:31:30.250", datetime(2024, 9, 3, 19, 31, 30, 250000), ""),
    ("2024-02-30T19:31:30Z", None, ""),
    ("yesterday", None, ""),
    ("2024-09-03T19:31:30+99:99", None, ""),
    ("2024-09-03T19:31:30+15", None, ""),
])
def test_guano_timestamps(ts, expected, off):
    assert parse_timestamp(ts) == (expected, off)


def test_guano_tolerates_spaces_nuls_and_bad_bytes():
    g = parse_guano(b"GUANO|Version: 1.0\nMake:   Wildlife Acoustics\nModel: Song Meter SM4BAT-FS\n"
                    b"Serial: S4U12345\nTimestamp: garbage\nTemperature Ext: -3.5\nNote: caf\xe9\n\x00\x00")
    assert g["recorder"] == "Wildlife Acoustics Song Meter SM4BAT-FS" and g["device_id"] == "S4U12345"
    assert g["temperature_c"] == -3.5 and "start_time" not in g
    assert g["warnings"] == ["unreadable GUANO Timestamp 'garbage'"] and g["guano"]["Note"] == "caf\ufffd"
    g = parse_guano("Loc Position: 51.5,-0.1\nTemperature Int: n/a\nOAD|Battery Voltage: 2.4\n")
    assert (g["latitude"], g["longitude"]) == (51.5, -0.1) and "temperature_c" not in g and g["battery_v"] == 2.4
    assert parse_guano(b"\xff\xfe\x00junk") == {"guano": {}, "warnings": []}


def test_guano_agrees_with_the_guano_package():
    guano = pytest.importorskip("guano")
    start = datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1))
    text = format_guano(start, "24E144055E080032", temperature_c=-4.5, battery_v=5.3, latitude=-33.5,
                        longitude=151.25, deployment_id="41C351E84E9996C2", original_filename="20240903_193130.WAV")
    ours = parse_guano(text)
    ref = guano.GuanoFile.from_string(text)
    assert ours["start_time"] == ref["Timestamp"] == start
    assert (ours["latitude"], ours["longitude"]) == ref["Loc Position"] == (-33.5, 151.25)
    assert ours["device_id"] == ref["Serial"] and ours["firmware"] == ref["Firmware Version"] == "1.10.1"
    assert ours["deployment_id"] == ref["OAD|Deployment ID"] and ours["temperature_c"] == -4.5
    assert ours["battery_v"] == 5.0  # written clamped at 5.0, as the firmware does
    assert {k for k in parse_guano_text(text)} == {f"{ns}|{k}" if ns else k for ns, k, _ in ref.items_namespaced()}


# ---------------------------------------------------------------- AudioMoth comment details

def test_comment_is_cut_at_nul_and_junk_is_harmless():
    c = parse_audiomoth_comment(C110 + "\x00 at gain setting 9 while battery state was 9.9V")
    assert c["battery_v"] == 4.1 and c["gain"] == "medium" and c["warnings"] == []
    assert parse_audiomoth_comment("Recorded at 25:61:00 32/13/2024 (UTC) by AudioMoth 24E144055E080032")[
        "warnings"] == ["impossible date/time in comment: 'Recorded at 25:61:00 32/13/2024 (UTC)'"]
    c = parse_audiomoth_comment("Recorded at 10:00:00 01/06/2020 (UTC+99) by AudioMoth 24526B065D325963")
    assert c["start_time"] == datetime(2020, 6, 1, 10) and c["utc_offset"] == "" and c["device_id"] == "24526B065D325963"
    assert c["warnings"] == ["impossible UTC offset +99:00; offset left unknown"]
    c = parse_audiomoth_comment("Recorded at 10:00:00 01/06/2020 (UTC+123) by AudioMoth 24526B065D325963")
    assert c["utc_offset"] == "" and c["start_time"].tzinfo is None and "unreadable time zone" in c["warnings"][0]
    assert parse_audiomoth_comment("") == {"warnings": []}
    assert parse_audiomoth_comment("\x00\x01\x02") == {"warnings": []}
    e = parse_audiomoth_comment("Expanded from 20240903_190000.WAV.")
    assert "start_time" not in e and "firmware" not in e and e["split_from"] == "20240903_190000.WAV"
    w = parse_audiomoth_comment('opso_metadata{"comment": "' + C110 + '"}')
    assert w["temperature_c"] == 20.0 and any("OpenSoundscape" in x for x in w["warnings"])
    assert parse_audiomoth_comment("opso_metadata{not json")["warnings"] == []


@pytest.mark.parametrize("offset,zone", [((1, 0), "UTC+1"), ((-8, 0), "UTC-8"), ((5, 30), "UTC+5:30"),
                                         ((-3, 30), "UTC-3:30"), ((0, 0), "UTC")])
def test_format_comment_round_trips(offset, zone):
    start = datetime(2024, 6, 1, 21, 30, 5, tzinfo=tz(*offset))
    text = format_comment(start, "24E144055E080032", gain="low-medium", battery_v=3.77, temperature_c=-1.5,
                          high_pass_khz=1.0, low_pass_khz=8.0, amplitude_threshold="-40 dB", min_trigger_s=5,
                          stop_reason="low voltage")
    assert f"({zone})" in text and text.startswith("Recorded at 21:30:05 01/06/2024")
    c = parse_audiomoth_comment(text)
    assert c["start_time"] == start and c["temperature_c"] == -1.5 and c["device_id"] == "24E144055E080032"
    assert c["gain"] == "low-medium" and c["battery_v"] == 3.8 and c["filter"] == "band-pass 1.0 kHz - 8.0 kHz"
    assert c["trigger"] == "amplitude threshold -40 dB, 5 s minimum" and c["stop_reason"] == "low voltage"
    assert c["firmware"] == "1.8.0-1.11.1" and c["warnings"] == []


def test_format_comment_variants():
    start = datetime(2024, 6, 1, 21, 30, tzinfo=timezone.utc)
    c = parse_audiomoth_comment(format_comment(start, "X", battery_v=2.1, deployment_id="41C351E84E9996C2",
                                               external_mic=True, low_pass_khz=4.0, stop_reason="magnetic switch"))
    assert (c["battery_v"], c["battery_bound"]) == (2.5, "<") and c["deployment_id"] == "41C351E84E9996C2"
    assert "device_id" not in c and c["external_mic"] is True and c["filter"] == "low-pass 4.0 kHz"
    assert c["stop_reason"] == "magnetic switch"
    c = parse_audiomoth_comment(format_comment(start, "24E144055E080032", battery_v=5.2))
    assert (c["battery_v"], c["battery_bound"]) == (4.9, ">") and "filter" not in c and "trigger" not in c


# ---------------------------------------------------------------- file names

@pytest.mark.parametrize("name,parent,expect", [
    ("5AEC29B0.WAV", None, dict(start_time=datetime(2018, 5, 4, 9, 36, 48, tzinfo=timezone.utc), utc_offset="+00:00",
                                recorder="AudioMoth")),
    ("5aec29b0.wav", None, dict(start_time=datetime(2018, 5, 4, 9, 36, 48, tzinfo=timezone.utc))),
    ("20240903_193130.WAV", None, dict(start_time=datetime(2024, 9, 3, 19, 31, 30), utc_offset="")),
    ("20240903_193130T.WAV", None, dict(triggered=True, start_time=datetime(2024, 9, 3, 19, 31, 30))),
    ("20240903_193130.WAV", "20240903", dict(start_time=datetime(2024, 9, 3, 19, 31, 30), warnings=[])),
    ("24E144055E080032_20240903_193130.WAV", None, dict(device_id="24E144055E080032", recorder="AudioMoth")),
    ("24E144055E080032_20240903_193130T.WAV", None, dict(device_id="24E144055E080032", triggered=True)),
    ("193130.WAV", "20240903", dict(start_time=datetime(2024, 9, 3, 19, 31, 30), utc_offset="")),
    ("S4A03895_20190522_060000.wav", None, dict(device_id="S4A03895", recorder="Wildlife Acoustics Song Meter",
                                                start_time=datetime(2019, 5, 22, 6), utc_offset="")),
    ("SMU01234_20230615_201500.wav", None, dict(device_id="SMU01234", recorder="Wildlife Acoustics Song Meter")),
    ("SM3_0_20190522_060000.wav", None, dict(device_id="SM3", start_time=datetime(2019, 5, 22, 6))),
    ("SITE4_1_20190522_060000.wav", None, dict(device_id="SITE4", recorder="Wildlife Acoustics Song Meter")),
    ("SM3_0+1_20190522_060000.wav", None, dict(device_id="SM3")),
    ("MYSITE_AC_20230101_010203.wav", None, dict(device_id="MYSITE_AC", start_time=datetime(2023, 1, 1, 1, 2, 3))),
    ("S4A03895_20190522$060000.wav", None, dict(gps_synced=True, start_time=datetime(2019, 5, 22, 6))),
    ("S4A03895_20190522_060000_250.wav", None, dict(start_time=datetime(2019, 5, 22, 6, 0, 0, 250000))),
    ("S4A03895_20190522$060000_250.wav", None, dict(gps_synced=True, start_time=datetime(2019, 5, 22, 6, 0, 0, 250000))),
])
def test_file_names(name, parent, expect):
    got = parse_filename(name, parent)
    for k, v in expect.items():
        assert got[k] == v, (name, k)
    if name[:2] in ("20", "19"):  # no prefix: nothing about the device
        assert "device_id" not in got and "recorder" not in got


def test_file_name_junk():
    assert "start_time" not in parse_filename("20241399_256161.WAV")
    assert parse_filename("20241399_256161.WAV")["warnings"] == ["file name '20241399_256161.WAV' has an impossible date/time"]
    assert parse_filename("notes.wav") == {"warnings": []}
    assert parse_filename("00000001.WAV") == {"warnings": []}  # hex, but not a plausible clock
    assert parse_filename("193130.WAV") == {"warnings": []}  # no daily folder: no date
    assert parse_filename("20240903_193130.WAV", "20240904")["warnings"] == [
        "file date 20240903 differs from its daily folder 20240904"]


# ---------------------------------------------------------------- GPS-Sync CSV

def test_gps_csv():
    head = ",PPS_NUMBER,AUDIOMOTH_TIME,STATUS,LAT_DEG,LAT_MIN,LAT_DIR,LONG_DEG,LONG_MIN,LONG_DIR\n"
    text = head + "0,0,2024-05-28T10:00:00.003,,,,,,,\n1,1,2024-05-28T10:00:01.003,A,33.0,30.0,S,151.0,15.0,E\n"
    assert parse_gps_csv(text) == {"firmware": "GPS-Sync", "latitude": -33.5, "longitude": 151.25}
    assert parse_gps_csv(head + "0,0,x,V,1,2,N,3,4,E\n") == {"firmware": "GPS-Sync"}
    assert parse_gps_csv("a,b,c\n1,2,3\n") == {} and parse_gps_csv("") == {}


# ---------------------------------------------------------------- RIFF walker

def _late_list(tmp_path, name="late.wav"):
    return write_wav_with_chunks(tmp_path / name, SAMPLES, 16000,
                                 chunks_after_data=[info_list({"ICMT": fixed_text(C110, 384)})])


def test_list_after_data_and_lying_sizes(tmp_path):
    p = _late_list(tmp_path)
    assert read_metadata(p).temperature_c == 20.0
    raw = bytearray(p.read_bytes())
    i = raw.index(b"data")
    raw[i + 4:i + 8] = struct.pack("<I", 10**9)
    (tmp_path / "lie.wav").write_bytes(bytes(raw))
    info = walk_riff(tmp_path / "lie.wav")
    data = [c for c in info.chunks if c.id == "data"][0]
    assert data.truncated and data.size == 10**9 and [c.id for c in info.chunks] == ["fmt ", "data"]
    assert info.data_size == len(raw) - (i + 8)  # what is really there, never the lie
    assert any("truncated" in w for w in info.warnings)
    rec = read_metadata(tmp_path / "lie.wav")
    assert rec.duration_s == pytest.approx((len(raw) - i - 8) // 2 / 16000) and rec.temperature_c is None


@pytest.mark.parametrize("placeholder", [0, 0xFFFFFFFF])
def test_unfinished_data_size(tmp_path, placeholder):
    p = write_wav_with_chunks(tmp_path / "x.wav", SAMPLES, 16000)
    raw = bytearray(p.read_bytes())
    raw[40:44] = struct.pack("<I", placeholder)
    p.write_bytes(bytes(raw))
    info = walk_riff(p)
    assert info.data_size == len(SAMPLES) * 2 and any("not finalised" in w for w in info.warnings)
    assert read_metadata(p).duration_s == 0.5


def test_empty_data_before_a_list_is_not_unfinished(tmp_path):
    p = write_wav_with_chunks(tmp_path / "e.wav", SAMPLES[:0], 16000,
                              chunks_after_data=[info_list({"ICMT": fixed_text(C110, 256)})])
    info = walk_riff(p)
    assert info.data_size == 0 and info.info["ICMT"] == C110 and info.warnings == []


def test_odd_chunk_without_pad_byte_in_the_middle(tmp_path):
    body = (b"WAVE" + chunk("fmt ", struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16))
            + b"junk" + struct.pack("<I", 3) + b"abc"  # no pad byte
            + info_list({"ICMT": fixed_text(C110, 256)}) + chunk("data", SAMPLES[:800].tobytes()))
    p = tmp_path / "odd.wav"
    p.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    info = walk_riff(p)
    assert [c.id for c in info.chunks] == ["fmt ", "junk", "LIST", "data"]
    assert info.info["ICMT"] == C110 and info.data_size == 1600
    assert any("no pad byte" in w for w in info.warnings)


def test_binary_and_non_utf8_icmt(tmp_path):
    junk = write_wav_with_chunks(tmp_path / "junk.wav", SAMPLES, 16000,
                                 chunks_before_data=[info_list({"ICMT": b"\xff\xfe\x01binary\x9c\x80\x00rest"})])
    rec = read_metadata(junk)
    assert rec.start_time is None and rec.comment == "\xff\xfebinary" and rec.recorder == ""
    latin = write_wav_with_chunks(tmp_path / "latin.wav", SAMPLES, 16000,
                                  chunks_before_data=[info_list({"ICMT": C110.encode() + b" caf\xe9\x00"})])
    rec = read_metadata(latin)
    assert rec.comment.endswith("café") and rec.temperature_c == 20.0


def test_bad_list_entries_and_headers(tmp_path):
    entry = b"ICMT" + struct.pack("<I", 5000) + C110.encode()  # runs past its list
    p = write_wav_with_chunks(tmp_path / "l.wav", SAMPLES, 16000, chunks_before_data=[chunk("LIST", b"INFO" + entry)])
    info = walk_riff(p)
    assert info.info["ICMT"] == C110 and any("runs past its list" in w for w in info.warnings)
    q = write_wav_with_chunks(tmp_path / "id.wav", SAMPLES, 16000, chunks_before_data=[b"\x00\x01\x02\x03\x04\x00\x00\x00"])
    assert any("unreadable chunk header" in w for w in walk_riff(q).warnings)
    short = tmp_path / "short.wav"
    body = b"WAVE" + chunk("fmt ", b"\x01\x00\x01\x00") + chunk("data", b"\x00" * 10)
    short.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    rec = read_metadata(short)
    assert rec.sample_rate_hz is None and any("fmt chunk too short" in w for w in rec.warnings)
    for name, content in [("empty.wav", b""), ("riff.wav", b"RIFF"), ("text.wav", b"hello"),
                          ("trunc.wav", _late_list(tmp_path).read_bytes()[:30])]:
        (tmp_path / name).write_bytes(content)
        rec = read_metadata(tmp_path / name)
        assert rec.start_time is None and rec.duration_s is None and rec.warnings, name
    missing = read_metadata(tmp_path / "missing.wav")
    assert missing.duration_s is None and any("could not open" in w for w in missing.warnings)


def test_rf64_and_extensible(tmp_path):
    import soundfile as sf

    x = SAMPLES.astype(np.float32) / 32768
    sf.write(tmp_path / "rf64.wav", x, 16000, format="RF64")
    r = walk_riff(tmp_path / "rf64.wav")
    assert r.form == "RF64" and "ds64" in [c.id for c in r.chunks] and r.data_size == len(SAMPLES) * 2
    assert read_metadata(tmp_path / "rf64.wav").duration_s == 0.5
    sf.write(tmp_path / "wavex.wav", np.stack([x, x, x], axis=1), 22050, format="WAVEX", subtype="PCM_24")
    r = walk_riff(tmp_path / "wavex.wav")
    assert r.fmt["format_tag"] == 0xFFFE and r.fmt["subformat_tag"] == 1 and r.fmt["channels"] == 3
    rec = read_metadata(tmp_path / "wavex.wav")
    assert (rec.sample_rate_hz, rec.channels, rec.duration_s) == (22050, 3, pytest.approx(8000 / 22050))


def test_compressed_wav_duration_comes_from_soundfile(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "adpcm.wav", SAMPLES.astype(np.float32) / 32768, 16000, subtype="IMA_ADPCM")
    r = walk_riff(tmp_path / "adpcm.wav")
    assert r.fmt["format_tag"] == 0x11 and not r.plain and r.duration_s is None
    rec = read_metadata(tmp_path / "adpcm.wav")  # blocks of 505 frames: 8080 frames, not bytes / block_align
    assert rec.duration_s == pytest.approx(sf.info(str(tmp_path / "adpcm.wav")).duration) and rec.duration_s >= 0.5


def test_never_reads_audio_data(tmp_path):
    """A 3 GiB (sparse) recording with LIST after data is walked by seeking, in milliseconds."""
    n_bytes = 3 * 2**30
    p = tmp_path / "big.wav"
    lst = info_list({"ICMT": fixed_text(C110, 384)})
    fmt = chunk("fmt ", struct.pack("<HHIIHH", 1, 1, 384000, 768000, 2, 16))
    with open(p, "wb") as fh:
        fh.write(b"RIFF" + struct.pack("<I", 4 + len(fmt) + 8 + n_bytes + len(lst)) + b"WAVE" + fmt)
        fh.write(b"data" + struct.pack("<I", n_bytes))
        fh.seek(n_bytes, 1)
        fh.write(lst)
    t0 = time.perf_counter()
    rec = read_metadata(p)
    assert time.perf_counter() - t0 < 0.5
    assert rec.duration_s == pytest.approx(n_bytes / 2 / 384000) and rec.temperature_c == 20.0 and rec.warnings == []


# ---------------------------------------------------------------- fuzzing

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=st.binary(max_size=600), sizes=st.lists(st.integers(0, 2**32 - 1), max_size=3))
def test_random_bytes_after_a_valid_header_never_raise(tmp_path, tail, sizes):
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    lying = b"".join(cid + struct.pack("<I", s) for cid, s in zip([b"LIST", b"guan", b"data"], sizes))
    body = b"WAVE" + chunk("fmt ", fmt) + lying + tail
    p = tmp_path / "fuzz.wav"
    p.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    rec = read_metadata(p)
    assert isinstance(rec.warnings, list) and rec.sample_rate_hz == 16000
    assert rec.duration_s is None or 0 <= rec.duration_s <= (len(lying) + len(tail)) / 32000
    json.dumps(rec.to_row())


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300), zone=st.from_regex(r"\A\(UTC[+-]?[0-9]{0,3}(:[0-9]{0,3})?\)\Z"),
       stamp=st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}(Z|[+-][0-9:]{1,6})?\Z"))
def test_parsers_never_raise(text, zone, stamp):
    c = parse_audiomoth_comment(f"Recorded at 10:00:00 01/06/2020 {zone} by AudioMoth 24526B065D325963")
    assert c["utc_offset"] == "" or c["start_time"].utcoffset() is not None
    g = parse_guano("Timestamp:" + stamp)
    assert "start_time" in g or g["warnings"]
    assert isinstance(parse_audiomoth_comment(text)["warnings"], list)
    assert isinstance(parse_audiomoth_comment("Recorded at " + text)["warnings"], list)
    parse_filename(text[:60] + ".wav", text[:8])
    parse_guano(text)
    parse_guano("Timestamp:" + text)
    parse_gps_csv(",PPS_NUMBER,AUDIOMOTH_TIME,STATUS,LAT_DEG,LAT_MIN,LAT_DIR,LONG_DEG,LONG_MIN,LONG_DIR\n" + text)
