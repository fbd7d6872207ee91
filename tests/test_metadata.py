"""Recorder metadata end to end: real files, every AudioMoth firmware's comment in real RIFF layouts,
precedence GUANO > comment > IART > file name, and ``monitor metadata`` as a subprocess."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from monitor.metadata import read_metadata
from monitor.metadata.audiomoth import BOGUS_ID, parse_audiomoth_comment
from monitor.metadata.riff import walk_riff
from monitor.metadata.writer import fixed_text, format_guano, write_audiomoth_wav

SAMPLES = (np.sin(np.arange(8000) / 5) * 3000).astype("<i2")
ROW_KEYS = ["recorder", "device_id", "deployment_id", "firmware", "start_time", "utc_offset", "temperature_c",
            "battery_v", "gain", "sample_rate_hz", "channels", "duration_s", "latitude", "longitude", "filter",
            "trigger", "stop_reason", "comment", "warnings"]
STALE = "STALE at gain setting 9 by AudioMoth FFFFFFFFFFFFFFFF while battery state was 9.9V"


def tz(h: int, m: int = 0) -> timezone:
    return timezone(timedelta(hours=h, minutes=m if h >= 0 else -m))


def icmt_size(firmware: str) -> int:
    """The fixed ICMT buffer of each firmware generation."""
    if firmware.startswith(("1.0", "1.1.")):
        return 128
    if firmware.startswith(("1.2", "1.3")):
        return 256
    return 384


# (firmware as written, comment, expected record fields). Every comment is the firmware's own wording.
FIRMWARE = [
    ("1.0", "Recorded at 09:32:00 04/05/2018 by AudioMoth 0FE081F80FE081F0 at gain setting 2 while battery state was 4.03V",
     dict(start_time=datetime(2018, 5, 4, 9, 32, tzinfo=timezone.utc), utc_offset="+00:00", gain="2", battery_v=4.3,
          firmware="1.0")),
    ("1.1.0", "Recorded at 09:32:00 04/05/2018 (UTC) by AudioMoth 0FE081F80FE081F0 at gain setting 2 while battery state was 4.3V",
     dict(battery_v=4.3, firmware="1.0.1-1.1.0", utc_offset="+00:00", gain="2")),
    ("1.2.0", "Recorded at 21:00:00 24/12/2019 (UTC-8) by AudioMoth 24526B065D325963 at gain setting 2 while battery state was 4.7V.",
     dict(start_time=datetime(2019, 12, 24, 21, 0, tzinfo=tz(-8)), utc_offset="-08:00", device_id="24526B065D325963",
          firmware="1.2.0-1.3.0", battery_bound="")),
    ("1.2.1", "Recorded at 10:00:00 01/06/2020 (UTC+10) by AudioMoth 24526B065D325963 at gain setting 3 while battery state was less than 3.6V. Recording cancelled before completion due to low battery voltage.",
     dict(start_time=datetime(2020, 6, 1, 10, tzinfo=tz(10)), utc_offset="+10:00", battery_v=3.6, battery_bound="<",
          stop_reason="low voltage", firmware="1.2.1-1.3.0", gain="3")),
    ("1.2.1 switch", "Recorded at 10:00:00 01/06/2020 (UTC) by AudioMoth 24526B065D325963 at gain setting 1 while battery state was 4.5V. Recording cancelled before completion due to change of switch position.",
     dict(stop_reason="switch position change", firmware="1.2.1-1.3.0")),
    ("1.3.0 +5:30", "Recorded at 06:15:00 02/07/2020 (UTC+5:30) by AudioMoth 24526B065D325963 at gain setting 2 while battery state was greater than 4.9V.",
     dict(utc_offset="+05:30", battery_v=4.9, battery_bound=">", firmware="1.2.2-1.3.0",
          start_time=datetime(2020, 7, 2, 6, 15, tzinfo=tz(5, 30)))),
    ("1.3.0 -3:30", "Recorded at 06:15:00 02/07/2020 (UTC-3:30) by AudioMoth 24526B065D325963 at gain setting 2 while battery state was 4.2V.",
     dict(utc_offset="-03:30", start_time=datetime(2020, 7, 2, 6, 15, tzinfo=tz(-3, 30)))),
    ("1.3.0 :30", "Recorded at 06:15:00 02/07/2020 (UTC:30) by AudioMoth 24526B065D325963 at gain setting 2 while battery state was 4.2V.",
     dict(utc_offset="", start_time=datetime(2020, 7, 2, 6, 15))),
    ("1.4.4", "Recorded at 22:10:00 15/03/2021 (UTC) by AudioMoth 24E144055E080032 at medium-high gain setting while battery state was 4.0V and temperature was -2.5C. Amplitude threshold was 500. Band-pass filter applied with cut-off frequencies of 1.0kHz and 8.0kHz. Recording cancelled before completion due to file size limit.",
     dict(gain="medium-high", temperature_c=-2.5, filter="band-pass 1.0 kHz - 8.0 kHz", trigger="amplitude threshold 500",
          stop_reason="file size limit", firmware="1.4.0-1.4.4")),
    ("1.4.0 low-pass", "Recorded at 22:10:00 15/03/2021 (UTC+1) by AudioMoth 24E144055E080032 at low-medium gain setting while battery state was less than 2.5V and temperature was 24.5C. Low-pass filter applied with cut-off frequency of 8.0kHz. Recording cancelled before completion due to low voltage.",
     dict(gain="low-medium", battery_v=2.5, battery_bound="<", filter="low-pass 8.0 kHz", stop_reason="low voltage",
          trigger="", firmware="1.4.0-1.4.4")),
    ("1.5.0", "Recorded at 22:10:00 15/03/2021 (UTC) during deployment 41C351E84E9996C2 using external microphone at medium gain setting while battery state was 4.1V and temperature was 12.0C. Recording cancelled before completion due to microphone change.",
     dict(deployment_id="41C351E84E9996C2", device_id="24E144055E080032", external_mic=True,
          stop_reason="microphone change", firmware="1.5.0")),
    ("1.6.0", "Recorded at 05:00:00 01/05/2022 (UTC-4) by AudioMoth 24E144055E080032 at high gain while battery was 4.1V and temperature was 14.0C. Amplitude threshold was 0.5% with 1s minimum trigger duration. High-pass filter with frequency of 1.0kHz applied. Recording stopped due to switch position change.",
     dict(trigger="amplitude threshold 0.5%, 1 s minimum", filter="high-pass 1.0 kHz", firmware="1.6.0-1.7.x",
          stop_reason="switch position change", gain="high")),
    ("1.7.1", "Recorded at 05:00:00 01/05/2022 (UTC+2) by AudioMoth 24E144055E080032 at low gain while battery was 3.9V and temperature was 8.5C. Amplitude threshold was -40 dB with 1s minimum trigger duration. Low-pass filter with frequency of 8.0kHz applied. Recording stopped by magnetic switch.",
     dict(trigger="amplitude threshold -40 dB, 1 s minimum", filter="low-pass 8.0 kHz", stop_reason="magnetic switch",
          firmware="1.7.x", gain="low")),
    ("1.9.0 freq", "Recorded at 19:31:30 03/09/2023 (UTC) by AudioMoth 24E144055E080032 at high gain while battery was 4.3V and temperature was 18.7C. Band-pass filter with frequencies of 2.0kHz and 6.0kHz applied. Frequency trigger (4.0kHz and window length of 64 samples) threshold was 10% with 1s minimum trigger duration.",
     dict(trigger="frequency trigger 4.0 kHz, window 64 samples, threshold 10%, 1 s minimum",
          filter="band-pass 2.0 kHz - 6.0 kHz", firmware="1.8.0-1.11.1")),
    ("1.10.1", "Recorded at 19:31:30 03/09/2024 (UTC+1) by AudioMoth 24E144055E080032 at medium gain while battery was 4.3V and temperature was 18.7C. High-pass filter with frequency of 15.0kHz applied. Amplitude threshold was 4% with 5s minimum trigger duration.",
     dict(start_time=datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1)), temperature_c=18.7, filter="high-pass 15.0 kHz",
          trigger="amplitude threshold 4%, 5 s minimum", firmware="1.8.0-1.11.1", battery_v=4.3)),
    ("1.11.1", "Recorded at 23:59:59 31/12/2024 (UTC-5) by AudioMoth 24E144055E080032 at medium gain while battery was less than 2.5V and temperature was -10.0C. Recording stopped due to SD card write error.",
     dict(stop_reason="SD card write error", battery_v=2.5, battery_bound="<", temperature_c=-10.0,
          firmware="1.11.0-1.11.1", start_time=datetime(2024, 12, 31, 23, 59, 59, tzinfo=tz(-5)))),
    ("gps-sync", "Recorded at 10:00:00 28/05/2024 (UTC) by AudioMoth 243B1F026488F56E at medium gain while battery was 3.8V and temperature was 12.8C. Recording stopped due to magnetic switch.",
     dict(stop_reason="magnetic switch", utc_offset="+00:00", firmware="GPS-Sync", device_id="243B1F026488F56E")),
]


@pytest.mark.parametrize("firmware,comment,expect", FIRMWARE, ids=[f[0] for f in FIRMWARE])
def test_firmware_comments_in_real_layout(tmp_path, firmware, comment, expect):
    size = icmt_size(firmware)
    assert len(comment) < size
    deployment = "deployment" in comment
    # 1.0-1.1 names are hex Unix time (UTC); later ones local YYYYMMDD_HHMMSS
    t = parse_audiomoth_comment(comment)["start_time"]
    name = f"{int(t.timestamp()):08X}.WAV" if firmware.startswith(("1.0", "1.1.")) else f"{t:%Y%m%d_%H%M%S}.WAV"
    p = write_audiomoth_wav(tmp_path / name, SAMPLES, 48000, comment,
                            device_id="24E144055E080032" if deployment else None, icmt_bytes=size, stale=STALE)
    raw = p.read_bytes()
    at = raw.index(b"ICMT")
    assert struct.unpack("<I", raw[at + 4:at + 8])[0] == size and b"STALE" in raw  # the stale tail is really there
    rec = read_metadata(p)
    assert "STALE" not in rec.comment and rec.comment == comment
    for k, v in expect.items():
        if k == "firmware":
            assert rec.firmware == v and rec.firmware_source == "inferred"
            assert rec.to_row()["firmware"] == f"{v} (inferred)"
        else:
            assert getattr(rec, k) == v, k
    assert rec.recorder == "AudioMoth" and rec.sample_rate_hz == 48000 and rec.channels == 1
    assert rec.duration_s == pytest.approx(8000 / 48000, abs=1e-6)
    assert rec.sources["start_time"] == "comment" and rec.sources["duration_s"] == "header"
    if BOGUS_ID in comment:
        assert rec.device_id == "" and rec.device_id_valid is False
        assert any("placeholder" in w for w in rec.warnings)
    else:
        assert rec.device_id_valid is True
    if deployment:
        assert rec.sources["device_id"] == "iart"
    if rec.battery_bound:
        assert any("bound" in w for w in rec.warnings)
    if ":30)" in comment and "UTC:30" in comment:
        assert rec.to_row()["start_time"] == "2020-07-02T06:15:00" and any("sign" in w for w in rec.warnings)
    assert set(rec.to_row()) == set(ROW_KEYS) and not any("differs" in w for w in rec.warnings)


def test_guano_first_then_comment_then_name(tmp_path):
    start = datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1))
    guan = format_guano(start, "24E144055E080032", firmware="1.10.1", temperature_c=18.7, battery_v=4.3,
                        latitude=51.75, longitude=-1.25, deployment_id="ABCDEF0123456789",
                        original_filename="20240903_193130.WAV")
    guan += "Note:a\n" if len(guan) % 2 == 0 else ""
    assert len(guan) % 2 == 1  # odd, written last without a pad byte as AudioMoth does
    p = write_audiomoth_wav(tmp_path / "renamed.WAV", SAMPLES, 48000, FIRMWARE[14][1], device_id="24E144055E080032",
                            guano=guan)
    raw = p.read_bytes()
    assert raw.endswith(guan.encode()) and struct.unpack("<I", raw[4:8])[0] + 8 == len(raw)
    rec = read_metadata(p)
    assert rec.firmware == "1.10.1" and rec.firmware_source == "guano" and rec.to_row()["firmware"] == "1.10.1"
    assert rec.recorder == "Open Acoustic Devices AudioMoth"
    assert rec.start_time == start and rec.utc_offset == "+01:00"
    assert (rec.latitude, rec.longitude) == (51.75, -1.25)
    assert rec.deployment_id == "ABCDEF0123456789" and rec.battery_v == 4.3
    assert rec.sources["start_time"] == "guano" and rec.sources["gain"] == "comment"
    assert rec.sources["utc_offset"] == "guano" and rec.sources["device_id"] == "guano"
    assert rec.filter == "high-pass 15.0 kHz" and rec.gain == "medium"
    assert not any("differs" in w for w in rec.warnings)


def test_naive_guano_time_takes_the_comment_offset_and_conflicts_warn(tmp_path):
    guan = "GUANO|Version:1.0\nMake:Open Acoustic Devices\nModel:AudioMoth\nTimestamp:2024-09-03T19:31:30\n"
    p = write_audiomoth_wav(tmp_path / "20240903_193130.WAV", SAMPLES, 48000, FIRMWARE[14][1], guano=guan)
    rec = read_metadata(p)
    assert rec.start_time == datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1)) and rec.utc_offset == "+01:00"
    assert rec.sources["start_time"] == "guano" and rec.sources["utc_offset"] == "comment"
    # a renamed file: the name's time disagrees with the comment, which wins, with a warning
    q = write_audiomoth_wav(tmp_path / "20240903_200000.WAV", SAMPLES, 48000, FIRMWARE[14][1])
    rec = read_metadata(q)
    assert rec.start_time == datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1))
    assert [w for w in rec.warnings if "differs" in w] == [
        "start time from filename (2024-09-03T20:00:00) differs from comment (2024-09-03T19:31:30+01:00); using comment"]


def test_song_meter_guano_and_name(tmp_path):
    guan = ("GUANO|Version: 1.0\nMake: Wildlife Acoustics, Inc.\nModel: Song Meter SM4\nSerial: S4A03895\n"
            "Firmware Version: 2.3.0\nTimestamp: 2019-05-22 06:00:00-05:00\nLoc Position: 4.18 -52.34\n"
            "Temperature Ext: 23.25\nWA|SM4|Gain: 16\n")
    from monitor.metadata.riff import chunk, write_wav_with_chunks

    p = write_wav_with_chunks(tmp_path / "S4A03895_20190522_060000.wav", SAMPLES, 24000,
                              chunks_after_data=[chunk("guan", guan.encode())])
    rec = read_metadata(p)
    assert rec.recorder == "Wildlife Acoustics, Inc. Song Meter SM4" and rec.device_id == "S4A03895"
    assert rec.firmware == "2.3.0" and rec.firmware_source == "guano"
    assert rec.start_time == datetime(2019, 5, 22, 6, tzinfo=tz(-5)) and rec.utc_offset == "-05:00"
    assert rec.temperature_c == 23.25 and (rec.latitude, rec.longitude) == (4.18, -52.34)
    assert rec.to_row()["start_time"] == "2019-05-22T06:00:00-05:00" and rec.warnings == []


def test_deployment_named_files_keep_the_device_id_apart(tmp_path):
    comment = FIRMWARE[10][1]  # 1.5.0, during deployment 41C351E84E9996C2
    p = write_audiomoth_wav(tmp_path / "41C351E84E9996C2_20210315_221000.WAV", SAMPLES, 48000, comment,
                            device_id="24E144055E080032")
    rec = read_metadata(p)
    assert rec.device_id == "24E144055E080032" and rec.deployment_id == "41C351E84E9996C2"
    q = write_audiomoth_wav(tmp_path / "41C351E84E9996C2_20210315_221000T.WAV", SAMPLES, 48000, comment)
    rec = read_metadata(q)  # no IART: the name's prefix is the deployment, so the device stays unknown
    assert rec.device_id == "" and rec.deployment_id == "41C351E84E9996C2" and rec.device_id_valid is None


def test_split_comment_uses_iart_and_name(tmp_path):
    p = write_audiomoth_wav(tmp_path / "20240903_193130.WAV", SAMPLES, 48000,
                            "Split from 20240903_190000.WAV as file 2 of 6.", device_id="24E144055E080032")
    rec = read_metadata(p)
    assert rec.device_id == "24E144055E080032" and rec.sources["device_id"] == "iart"
    assert rec.start_time == datetime(2024, 9, 3, 19, 31, 30) and rec.sources["start_time"] == "filename"
    assert rec.utc_offset == "" and "utc_offset" not in rec.sources and rec.firmware == ""
    assert any("split from 20240903_190000.WAV" in w for w in rec.warnings)


def test_real_files(shared):
    d = shared / "data" / "recordings"
    one = read_metadata(d / "opensoundscape" / "1min.wav")
    assert one.start_time == datetime(2018, 5, 4, 9, 32, tzinfo=timezone.utc) and one.device_id_valid is False
    assert one.device_id == "" and one.battery_v == 4.3 and one.gain == "2" and one.firmware == "1.0.1-1.1.0"
    assert one.duration_s == 60.0 and one.sample_rate_hz == 32000 and one.channels == 1
    info = walk_riff(d / "opensoundscape" / "1min.wav")
    assert [(c.id, c.offset, c.size) for c in info.chunks] == [
        ("fmt ", 20, 16), ("data", 44, 3840000), ("LIST", 3840052, 128), ("id3 ", 3840188, 140)]
    assert info.id3 and info.data_offset == 44 and info.warnings == []

    meta = read_metadata(d / "opensoundscape" / "metadata.wav")
    assert meta.device_id == "24526B065D325963" and meta.device_id_valid is True and meta.battery_v == 4.7
    assert meta.to_row()["start_time"] == "2020-04-04T10:25:00+00:00" and meta.firmware == "1.2.0-1.3.0"
    assert walk_riff(d / "opensoundscape" / "metadata.wav").info["IART"] == "AudioMoth 24526B065D325963"

    gps = read_metadata(d / "opensoundscape" / "audiomoth_gps.wav")
    assert gps.device_id == "243B1F026488F56E" and gps.temperature_c == 12.8 and gps.gain == "medium"
    assert gps.battery_v == 3.8 and gps.start_time == datetime(2024, 5, 28, 10, tzinfo=timezone.utc)
    assert gps.firmware == "GPS-Sync" and gps.sources["firmware"] == "gps_csv"
    # first valid fix in the companion CSV: 39 deg 54.3709' N, 79 deg 21.886' W
    assert (gps.latitude, gps.longitude) == (39.906182, -79.364767) and gps.sources["latitude"] == "gps_csv"
    assert any("OpenSoundscape" in w for w in gps.warnings)

    birds = read_metadata(d / "opensoundscape" / "birds_10s.wav")
    assert birds.recorder == "" and birds.start_time is None and birds.warnings == []
    assert birds.duration_s == pytest.approx(648526 / 2 / 32000, abs=1e-6)

    maad = sorted((d / "scikit-maad").glob("*.wav"))
    assert len(maad) == 12
    for i, p in enumerate(maad):
        sm = read_metadata(p)
        assert sm.start_time == datetime(2019, 5, 22, 2 * i) and sm.utc_offset == "" and sm.device_id == "S4A03895"
        assert sm.recorder == "Wildlife Acoustics Song Meter" and sm.sources["start_time"] == "filename"
        assert sm.to_row()["start_time"] == f"2019-05-22T{2 * i:02d}:00:00" and sm.duration_s == 10.0


def test_flac_vorbis_comment(tmp_path):
    import soundfile as sf

    p = tmp_path / "20240101_000000.flac"
    with sf.SoundFile(p, "w", 16000, 1, format="FLAC") as f:
        f.comment = FIRMWARE[14][1]
        f.artist = "AudioMoth 24E144055E080032"
        f.write(SAMPLES.astype(np.float32) / 32768)
    rec = read_metadata(p)
    assert rec.temperature_c == 18.7 and rec.device_id == "24E144055E080032" and rec.duration_s == 0.5
    assert rec.sample_rate_hz == 16000 and rec.sources["sample_rate_hz"] == "header"


def test_writer_output_decodes_exactly(tmp_path):
    import soundfile as sf

    start = datetime(2024, 4, 12, 21, 15, tzinfo=tz(-4))
    from monitor.metadata.audiomoth import format_comment

    stereo = np.stack([SAMPLES, -SAMPLES], axis=1)
    guan = format_guano(start, "24E144055E080032", temperature_c=11.5, battery_v=4.1)
    p = write_audiomoth_wav(tmp_path / "a.WAV", stereo, 48000, format_comment(start, "24E144055E080032"),
                            device_id="24E144055E080032", guano=guan + ("" if len(guan) % 2 else " "))
    x, sr = sf.read(p, dtype="int16")
    assert sr == 48000 and np.array_equal(x, stereo)
    rec = read_metadata(p)
    assert rec.channels == 2 and rec.start_time == start and rec.device_id == "24E144055E080032"
    q = write_audiomoth_wav(tmp_path / "b.WAV", SAMPLES, 32000, "x" * 500, info_after_data=True)
    assert [c.id for c in walk_riff(q).chunks] == ["fmt ", "data", "LIST"]
    assert read_metadata(q).comment == "x" * 383  # cut to the buffer, NUL kept
    assert fixed_text("ab", 6, "cd") == b"ab\x00cd\x00"


def _json_rows(out: str) -> dict[str, dict]:
    return {r["file"]: r for r in map(json.loads, out.splitlines())}


def test_metadata_cli_on_a_card(tmp_path):
    card = tmp_path / "card"
    start = datetime(2024, 9, 3, 19, 31, 30, tzinfo=tz(1))
    write_audiomoth_wav(card / "AM1" / "20240903" / "20240903_193130.WAV", SAMPLES, 48000, FIRMWARE[14][1],
                        device_id="24E144055E080032")
    write_audiomoth_wav(card / "AM1" / "20240903" / "20240903_200000.WAV", SAMPLES, 48000, FIRMWARE[3][1])
    (card / "AM1" / "CONFIG.TXT").write_text("Device ID: 24E144055E080032\n")
    (card / "junk.wav").write_bytes(b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00")
    r = subprocess.run([sys.executable, "-m", "monitor", "metadata", "--json", str(card)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = _json_rows(r.stdout)
    assert list(rows) == ["AM1/20240903/20240903_193130.WAV", "AM1/20240903/20240903_200000.WAV", "junk.wav"]
    a = rows["AM1/20240903/20240903_193130.WAV"]
    assert set(a) == {"file", *ROW_KEYS}
    assert a["start_time"] == start.isoformat() == "2024-09-03T19:31:30+01:00" and a["utc_offset"] == "+01:00"
    assert a["device_id"] == "24E144055E080032" and a["temperature_c"] == 18.7 and a["battery_v"] == 4.3
    assert a["firmware"] == "1.8.0-1.11.1 (inferred)" and a["sample_rate_hz"] == 48000 and a["channels"] == 1
    assert a["comment"] == FIRMWARE[14][1] and a["warnings"] == [] and a["latitude"] is None
    b = rows["AM1/20240903/20240903_200000.WAV"]
    assert b["battery_v"] == 3.6 and b["stop_reason"] == "low voltage" and b["warnings"] == [
        "start time from filename (2024-09-03T20:00:00) differs from comment (2020-06-01T10:00:00+10:00); using comment",
        "battery was less than 3.6 V (battery_v is a bound)"]
    junk = rows["junk.wav"]
    assert junk["start_time"] == "" and junk["duration_s"] is None and junk["warnings"]
    assert "skipped: AM1/CONFIG.TXT" in r.stderr

    t = subprocess.run([sys.executable, "-m", "monitor", "metadata", str(card), str(card / "junk.wav")],
                       capture_output=True, text=True, timeout=120)
    assert t.returncode == 0, t.stderr
    lines = t.stdout.splitlines()
    assert lines[0].split()[:3] == ["file", "recorder", "device_id"]
    assert "<3.6" in lines[2] and lines[4].startswith("junk.wav")  # the file given by name appears again
    assert "skipped: AM1/CONFIG.TXT: not an audio file (.TXT)" in lines

    bad = subprocess.run([sys.executable, "-m", "monitor", "metadata", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr and bad.stderr.count("\n") == 1


def test_metadata_cli_on_shared(shared):
    r = subprocess.run([sys.executable, "-m", "monitor", "metadata", "--json",
                        str(shared / "data" / "recordings" / "opensoundscape")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    rows = _json_rows(r.stdout)
    assert list(rows) == ["1min.wav", "audiomoth_gps.wav", "birds_10s.wav", "metadata.wav"]
    assert rows["metadata.wav"]["start_time"] == "2020-04-04T10:25:00+00:00"
    assert rows["audiomoth_gps.wav"]["latitude"] == 39.906182 and isinstance(rows["1min.wav"]["warnings"], list)
