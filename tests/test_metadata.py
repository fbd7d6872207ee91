"""Recorder metadata: real files, every AudioMoth firmware's comment in real RIFF layouts, GUANO, names, junk."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.metadata import read_metadata
from monitor.metadata.audiomoth import BOGUS_ID, format_comment, parse_audiomoth_comment
from monitor.metadata.filenames import parse_filename
from monitor.metadata.guano import parse_guano, parse_timestamp
from monitor.metadata.riff import chunk, info_list, walk_riff, write_wav_with_chunks

SAMPLES = (np.sin(np.arange(8000) / 5) * 3000).astype("<i2")


def icmt(text: str, size: int = 384, stale: str = "") -> bytes:
    """AudioMoth's fixed-size, NUL-padded comment buffer; before 1.11 stale text may follow the NUL."""
    raw = text.encode() + b"\x00" + stale.encode()
    return raw[:size].ljust(size, b"\x00")


def audiomoth_wav(path, comment: str, iart: str | None = None, guan: str | None = None, stale: str = "",
                  size: int = 384):
    entries = {"ICMT": icmt(comment, size, stale)}
    if iart:
        entries["IART"] = iart.encode() + b"\x00"
    after = [chunk("guan", guan.encode())] if guan else []
    return write_wav_with_chunks(path, SAMPLES, 48000, before_data=[info_list(entries)], after_data=after,
                                 pad_last=False)


def tz(h, m=0):
    return timezone(timedelta(hours=h, minutes=m if h >= 0 else -m))


FIRMWARE = [
    ("1.0", "Recorded at 09:32:00 04/05/2018 by AudioMoth 0FE081F80FE081F0 at gain setting 2 while battery state was 4.03V",
     dict(start_time=datetime(2018, 5, 4, 9, 32, tzinfo=timezone.utc), gain="2", battery_v=4.3, firmware="1.0")),
    ("1.1.0", "Recorded at 09:32:00 04/05/2018 (UTC) by AudioMoth 0FE081F80FE081F0 at gain setting 2 while battery state was 4.3V",
     dict(battery_v=4.3, firmware="1.0.1-1.1.0", utc_offset="+00:00")),
    ("1.2.0", "Recorded at 21:00:00 24/12/2019 (UTC-8) by AudioMoth 24526B065D325963 at gain setting 2 while battery state was 4.7V.",
     dict(start_time=datetime(2019, 12, 24, 21, 0, tzinfo=tz(-8)), utc_offset="-08:00", device_id="24526B065D325963",
          firmware="1.2.0-1.3.0")),
    ("1.2.1", "Recorded at 10:00:00 01/06/2020 (UTC+10) by AudioMoth 24526B065D325963 at gain setting 3 while battery state was less than 3.6V. Recording cancelled before completion due to low battery voltage.",
     dict(utc_offset="+10:00", battery_v=3.6, battery_bound="<", stop_reason="low voltage")),
    ("1.3.0 +5:30", "Recorded at 06:15:00 02/07/2020 (UTC+5:30) by AudioMoth 24526B065D325963 at gain setting 2 while battery state was greater than 4.9V.",
     dict(utc_offset="+05:30", battery_v=4.9, battery_bound=">", firmware="1.2.2-1.3.0",
          start_time=datetime(2020, 7, 2, 6, 15, tzinfo=tz(5, 30)))),
    ("1.3.0 -3:30", "Recorded at 06:15:00 02/07/2020 (UTC-3:30) by AudioMoth 24526B065D325963 at gain setting 2 while battery state was 4.2V.",
     dict(utc_offset="-03:30")),
    ("1.3.0 :30", "Recorded at 06:15:00 02/07/2020 (UTC:30) by AudioMoth 24526B065D325963 at gain setting 2 while battery state was 4.2V.",
     dict(utc_offset="", start_time=datetime(2020, 7, 2, 6, 15))),
    ("1.4.4", "Recorded at 22:10:00 15/03/2021 (UTC) by AudioMoth 24E144055E080032 at medium-high gain setting while battery state was 4.0V and temperature was -2.5C. Amplitude threshold was 500. Band-pass filter applied with cut-off frequencies of 1.0kHz and 8.0kHz. Recording cancelled before completion due to file size limit.",
     dict(gain="medium-high", temperature_c=-2.5, filter="band-pass 1.0 kHz - 8.0 kHz", trigger="amplitude threshold 500",
          stop_reason="file size limit", firmware="1.4.0-1.4.4")),
    ("1.5.0", "Recorded at 22:10:00 15/03/2021 (UTC) during deployment 41C351E84E9996C2 using external microphone at medium gain setting while battery state was 4.1V and temperature was 12.0C. Recording cancelled before completion due to microphone change.",
     dict(deployment_id="41C351E84E9996C2", device_id="24E144055E080032", external_mic=True, stop_reason="microphone change",
          firmware="1.5.0")),
    ("1.7.1", "Recorded at 05:00:00 01/05/2022 (UTC+2) by AudioMoth 24E144055E080032 at low gain while battery was 3.9V and temperature was 8.5C. Amplitude threshold was -40 dB with 1s minimum trigger duration. Low-pass filter with frequency of 8.0kHz applied. Recording stopped by magnetic switch.",
     dict(trigger="amplitude threshold -40 dB, 1 s minimum", filter="low-pass 8.0 kHz", stop_reason="magnetic switch",
          firmware="1.6.0-1.11.1", gain="low")),
    ("1.10.1", "Recorded at 19:31:30 03/09/2024 (UTC+1) by AudioMoth 24E144055E080032 at medium gain while battery was 4.3V and temperature was 18.7C. High-pass filter with frequency of 15.0kHz applied. Amplitude threshold was 4% with 5s minimum trigger duration.",
     dict(start_time=datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1)), temperature_c=18.7, filter="high-pass 15.0 kHz",
          trigger="amplitude threshold 4%, 5 s minimum")),
    ("1.9.0 freq", "Recorded at 19:31:30 03/09/2023 (UTC) by AudioMoth 24E144055E080032 at high gain while battery was 4.3V and temperature was 18.7C. Frequency trigger (4.0kHz and window length of 64 samples) threshold was 10% with 1s minimum trigger duration.",
     dict(trigger="frequency trigger 4.0 kHz, window 64 samples, threshold 10%, 1 s minimum", firmware="1.8.0-1.11.1")),
    ("1.11.1", "Recorded at 23:59:59 31/12/2024 (UTC-5) by AudioMoth 24E144055E080032 at medium gain while battery was less than 2.5V and temperature was -10.0C. Recording stopped due to SD card write error.",
     dict(stop_reason="SD card write error", battery_v=2.5, battery_bound="<", temperature_c=-10.0, firmware="1.11.0-1.11.1")),
    ("gps-sync", "Recorded at 10:00:00 28/05/2024 (UTC) by AudioMoth 243B1F026488F56E at medium gain while battery was 3.8V and temperature was 12.8C. Recording stopped due to magnetic switch.",
     dict(stop_reason="magnetic switch", utc_offset="+00:00")),
]


@pytest.mark.parametrize("name,comment,expect", FIRMWARE, ids=[f[0] for f in FIRMWARE])
def test_firmware_comments_in_real_layout(tmp_path, name, comment, expect):
    iart = "AudioMoth 24E144055E080032" if "deployment" in comment else None
    p = audiomoth_wav(tmp_path / "20240903_193130.WAV", comment, iart=iart,
                      stale="by AudioMoth FFFFFFFFFFFFFFFF at gain setting 9 STALE")
    rec = read_metadata(p)
    assert "STALE" not in rec.comment and rec.comment == comment
    for k, v in expect.items():
        if k == "firmware":
            assert rec.firmware == v and rec.firmware_source == "inferred"
            assert rec.to_row()["firmware"] == f"{v} (inferred)"
        else:
            assert getattr(rec, k) == v, k
    assert rec.recorder == "AudioMoth" and rec.sample_rate_hz == 48000 and rec.duration_s == pytest.approx(1 / 6, abs=1e-6)
    if BOGUS_ID in comment:
        assert rec.device_id == "" and rec.device_id_valid is False
    assert rec.sources.get("start_time") == "comment"


def test_guano_first_then_comment_then_name(tmp_path):
    guan = ("GUANO|Version:1.0\nMake:Open Acoustic Devices\nModel:AudioMoth\nSerial:24E144055E080032\n"
            "Firmware Version:1.10.1\nTimestamp:2024-09-03T19:31:30+01:00\nLoc Position: 51.75 -1.25\n"
            "Temperature Int:18.7\nOAD|Battery Voltage:4.3\nOAD|Deployment ID:ABCDEF0123456789\n"
            "Original Filename:20240903_193130.WAV\n")
    assert len(guan) % 2 == 1  # odd, written last without a pad byte as AudioMoth does
    comment = FIRMWARE[10][1]
    p = audiomoth_wav(tmp_path / "renamed.WAV", comment, iart="AudioMoth 24E144055E080032", guan=guan)
    raw = p.read_bytes()
    assert raw.endswith(guan.encode()) and struct.unpack("<I", raw[4:8])[0] + 8 == len(raw)
    rec = read_metadata(p)
    assert rec.firmware == "1.10.1" and rec.firmware_source == "guano"
    assert rec.recorder == "Open Acoustic Devices AudioMoth"
    assert rec.start_time == datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1)) and rec.utc_offset == "+01:00"
    assert (rec.latitude, rec.longitude) == (51.75, -1.25)
    assert rec.deployment_id == "ABCDEF0123456789" and rec.battery_v == 4.3
    assert rec.sources["start_time"] == "guano" and rec.sources["gain"] == "comment"
    assert rec.filter == "high-pass 15.0 kHz"


@pytest.mark.parametrize("ts,expected,off", [
    ("2024-09-03T19:31:30Z", datetime(2024, 9, 3, 19, 31, 30, tzinfo=timezone.utc), "+00:00"),
    ("2024-09-03T19:31:30+01:00", datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1)), "+01:00"),
    ("2024-09-03T19:31:30+0100", datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1)), "+01:00"),
    ("2024-09-03T19:31:30+1:00", datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1)), "+01:00"),
    ("2024-09-03T19:31:30-05:30", datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(-5, 30)), "-05:30"),
    ("2024-09-03 19:31:30.250", datetime(2024, 9, 3, 19, 31, 30, 250000), ""),
])
def test_guano_timestamps(ts, expected, off):
    assert parse_timestamp(ts) == (expected, off)


def test_guano_tolerates_spaces_and_junk():
    g = parse_guano(b"GUANO|Version: 1.0\nMake:   Wildlife Acoustics\nModel: Song Meter SM4BAT-FS\n"
                    b"Serial: S4U12345\nTimestamp: garbage\nTemperature Ext: -3.5\n\x00\x00")
    assert g["recorder"] == "Wildlife Acoustics Song Meter SM4BAT-FS" and g["device_id"] == "S4U12345"
    assert g["temperature_c"] == -3.5 and "start_time" not in g and g["warnings"]


@pytest.mark.parametrize("name,parent,expect", [
    ("5AEC29B0.WAV", None, dict(start_time=datetime(2018, 5, 4, 9, 36, 48, tzinfo=timezone.utc), utc_offset="+00:00")),
    ("20240903_193130.WAV", None, dict(start_time=datetime(2024, 9, 3, 19, 31, 30), utc_offset="")),
    ("20240903_193130T.WAV", None, dict(triggered=True)),
    ("24E144055E080032_20240903_193130.WAV", None, dict(device_id="24E144055E080032", recorder="AudioMoth")),
    ("193130.WAV", "20240903", dict(start_time=datetime(2024, 9, 3, 19, 31, 30))),
    ("S4A03895_20190522_060000.wav", None, dict(device_id="S4A03895", recorder="Wildlife Acoustics Song Meter")),
    ("SM3_0_20190522_060000.wav", None, dict(device_id="SM3", start_time=datetime(2019, 5, 22, 6))),
    ("SM3_0+1_20190522_060000.wav", None, dict(device_id="SM3")),
    ("MYSITE_AC_20230101_010203.wav", None, dict(device_id="MYSITE_AC", start_time=datetime(2023, 1, 1, 1, 2, 3))),
    ("S4A03895_20190522$060000.wav", None, dict(gps_synced=True)),
    ("S4A03895_20190522_060000_250.wav", None, dict(start_time=datetime(2019, 5, 22, 6, 0, 0, 250000))),
])
def test_file_names(name, parent, expect):
    got = parse_filename(name, parent)
    for k, v in expect.items():
        assert got[k] == v, (name, k)


def test_file_name_junk():
    assert "start_time" not in parse_filename("20241399_256161.WAV")
    assert parse_filename("20241399_256161.WAV")["warnings"]
    assert parse_filename("notes.wav") == {"warnings": []}


def test_real_files(shared):
    rec_dir = shared / "data" / "recordings"
    one = read_metadata(rec_dir / "opensoundscape" / "1min.wav")
    assert one.start_time == datetime(2018, 5, 4, 9, 32, tzinfo=timezone.utc) and one.device_id_valid is False
    assert one.battery_v == 4.3 and one.gain == "2" and one.duration_s == 60.0 and one.sample_rate_hz == 32000
    info = walk_riff(rec_dir / "opensoundscape" / "1min.wav")
    assert [c.id for c in info.chunks] == ["fmt ", "data", "LIST", "id3 "] and info.id3
    meta = read_metadata(rec_dir / "opensoundscape" / "metadata.wav")
    assert meta.device_id == "24526B065D325963" and meta.start_time == datetime(2020, 4, 4, 10, 25, tzinfo=timezone.utc)
    gps = read_metadata(rec_dir / "opensoundscape" / "audiomoth_gps.wav")
    assert gps.device_id == "243B1F026488F56E" and gps.temperature_c == 12.8 and gps.gain == "medium"
    assert any("OpenSoundscape" in w for w in gps.warnings)
    sm = read_metadata(rec_dir / "scikit-maad" / "S4A03895_20190522_060000.wav")
    assert sm.start_time == datetime(2019, 5, 22, 6) and sm.utc_offset == "" and sm.device_id == "S4A03895"
    assert sm.to_row()["start_time"] == "2019-05-22T06:00:00" and sm.sources["start_time"] == "filename"


def test_split_comment_uses_iart_and_name(tmp_path):
    p = audiomoth_wav(tmp_path / "20240903_193130.WAV", "Split from 20240903_190000.WAV as file 2 of 6.",
                      iart="AudioMoth 24E144055E080032")
    rec = read_metadata(p)
    assert rec.device_id == "24E144055E080032" and rec.sources["device_id"] == "iart"
    assert rec.start_time == datetime(2024, 9, 3, 19, 31, 30) and rec.sources["start_time"] == "filename"
    assert any("split" in w for w in rec.warnings)


def test_riff_oddities(tmp_path):
    # LIST after data, RF64 with ds64, a lying data size, binary junk and non-UTF-8 in ICMT
    p = write_wav_with_chunks(tmp_path / "late.wav", SAMPLES, 16000,
                              after_data=[info_list({"ICMT": icmt("Recorded at 01:02:03 04/05/2024 (UTC) by AudioMoth 24E144055E080032 at medium gain while battery was 4.1V and temperature was 20.0C.")})])
    assert read_metadata(p).temperature_c == 20.0
    raw = bytearray(p.read_bytes())
    i = raw.index(b"data")
    raw[i + 4:i + 8] = struct.pack("<I", 10**9)
    (tmp_path / "lie.wav").write_bytes(bytes(raw))
    info = walk_riff(tmp_path / "lie.wav")
    data = [c for c in info.chunks if c.id == "data"][0]
    assert data.truncated and data.size == 10**9
    assert info.data_size == len(raw) - (i + 8)  # what is really there, never the lie
    assert any("truncated" in w for w in info.warnings)
    junk = write_wav_with_chunks(tmp_path / "junk.wav", SAMPLES, 16000,
                                 before_data=[info_list({"ICMT": b"\xff\xfe\x00\x01binary\x9c\x80 caf\xe9\x00"})])
    rec = read_metadata(junk)
    assert rec.start_time is None and isinstance(rec.comment, str)
    import soundfile as sf

    sf.write(tmp_path / "rf64.wav", SAMPLES.astype(np.float32) / 32768, 16000, format="RF64")
    r = walk_riff(tmp_path / "rf64.wav")
    assert r.form == "RF64" and r.data_size == len(SAMPLES) * 2 and read_metadata(tmp_path / "rf64.wav").duration_s == 0.5
    (tmp_path / "text.wav").write_text("hello")
    assert read_metadata(tmp_path / "text.wav").start_time is None
    trunc = tmp_path / "trunc.wav"
    trunc.write_bytes(p.read_bytes()[:30])
    assert read_metadata(trunc).duration_s is None


def test_flac_vorbis_comment(tmp_path):
    import soundfile as sf

    p = tmp_path / "20240101_000000.flac"
    with sf.SoundFile(p, "w", 16000, 1, format="FLAC") as f:
        f.comment = FIRMWARE[10][1]
        f.artist = "AudioMoth 24E144055E080032"
        f.write(SAMPLES.astype(np.float32) / 32768)
    rec = read_metadata(p)
    assert rec.temperature_c == 18.7 and rec.device_id == "24E144055E080032" and rec.duration_s == 0.5


def test_format_comment_round_trips():
    start = datetime(2024, 6, 1, 21, 30, tzinfo=tz(-7))
    c = parse_audiomoth_comment(format_comment(start, "24E144055E080032", temperature_c=-1.5))
    assert c["start_time"] == start and c["temperature_c"] == -1.5 and c["device_id"] == "24E144055E080032"


HEADER = write_wav_with_chunks.__globals__["chunk"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=st.binary(max_size=600))
def test_random_bytes_after_a_valid_header_never_raise(tmp_path, tail):
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + chunk("fmt ", fmt) + tail
    p = tmp_path / "fuzz.wav"
    p.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    rec = read_metadata(p)
    assert isinstance(rec.warnings, list)
    json.dumps(rec.to_row(), default=str)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_comment_parser_never_raises(text):
    parse_audiomoth_comment(text)
    parse_filename(text[:60] + ".wav", text[:8])
    parse_guano(text)


def test_metadata_cli_json(shared, tmp_path):
    r = subprocess.run([sys.executable, "-m", "monitor", "metadata", "--json",
                        str(shared / "data" / "recordings" / "opensoundscape")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["file"] for x in rows] == ["1min.wav", "audiomoth_gps.wav", "birds_10s.wav", "metadata.wav"]
    keys = {"file", "recorder", "device_id", "deployment_id", "firmware", "start_time", "utc_offset", "temperature_c",
            "battery_v", "gain", "sample_rate_hz", "channels", "duration_s", "comment", "warnings"}
    assert keys <= set(rows[0])
    assert rows[3]["start_time"] == "2020-04-04T10:25:00+00:00" and isinstance(rows[0]["warnings"], list)
    t = subprocess.run([sys.executable, "-m", "monitor", "metadata", str(shared / "data" / "recordings")],
                       capture_output=True, text=True)
    assert t.returncode == 0 and "S4A03895" in t.stdout and "skipped: opensoundscape/audiomoth_gps.csv" in t.stdout
