"""Discovery: sorted, recursive, every oddity listed with a reason, loops and locked folders survived."""

import os

import soundfile as sf

from conftest import write_wav
from monitor.discover import Discovery, Found, Skipped, audio_extensions, discover


def _card(root):
    write_wav(root / "b" / "2.WAV", 1.0)
    write_wav(root / "b" / "10.wav", 1.0)
    write_wav(root / "a.flac", 1.0, fmt="FLAC", subtype="PCM_16")
    (root / "b" / "._2.WAV").write_bytes(b"\x00\x05\x16\x07")
    (root / ".hidden.wav").write_bytes(b"RIFF")
    (root / ".Trashes").mkdir()
    write_wav(root / ".Trashes" / "x.wav", 1.0)
    (root / "empty.wav").write_bytes(b"")
    (root / "CONFIG.TXT").write_text("gain 2")
    (root / "gps" / "20240101_000000.CSV").parent.mkdir()
    (root / "gps" / "20240101_000000.CSV").write_text("time,lat,lon\n")
    (root / "README").write_text("no extension")
    (root / "notes.wav").write_text("not audio, but named .wav")  # decided later, by decoding
    os.symlink(str(root), root / "b" / "loop")
    os.symlink(str(root / "a.flac"), root / "c_link.flac")
    os.symlink(str(root / "missing.wav"), root / "dangling.wav")


def test_lists_every_oddity_in_sorted_order(tmp_path):
    root = tmp_path / "CARD"
    _card(root)
    d = discover(root)
    assert [f.rel for f in d.recordings] == ["a.flac", "b/10.wav", "b/2.WAV", "notes.wav"]
    assert all(isinstance(f, Found) and f.path == root / f.rel for f in d.recordings)
    assert d.recordings[0].size == (root / "a.flac").stat().st_size
    assert d.recordings[0].mtime_ns == (root / "a.flac").stat().st_mtime_ns
    reasons = {s.rel: s.reason for s in d.skipped}
    assert sorted(reasons) == [".Trashes", ".hidden.wav", "CONFIG.TXT", "README", "b/._2.WAV", "b/loop",
                               "c_link.flac", "dangling.wav", "empty.wav", "gps/20240101_000000.CSV"]
    assert [s.rel for s in d.skipped] == sorted(reasons)
    assert reasons["b/._2.WAV"] == "macOS metadata file (AppleDouble '._' file), not a recording"
    assert reasons[".hidden.wav"] == "hidden file, not a recording"
    assert reasons[".Trashes"] == "hidden folder, not searched"
    assert reasons["empty.wav"] == "empty file (0 bytes), not a recording"
    assert reasons["CONFIG.TXT"] == "not an audio file (.TXT)"
    assert reasons["gps/20240101_000000.CSV"] == "not an audio file (.CSV)"
    assert reasons["README"] == "not an audio file (no extension)"
    assert reasons["b/loop"] == "folder link that loops back (visited already)"
    assert reasons["c_link.flac"] == "same file as a.flac (a link), listed once"
    status = {s.rel: s.status for s in d.skipped}
    assert status["dangling.wav"] == "failed" and "could not be read" in reasons["dangling.wav"]
    assert {v for k, v in status.items() if k != "dangling.wav"} == {"skipped"}
    assert discover(root) == d  # deterministic


def test_unreadable_folder_is_listed_not_fatal(tmp_path):
    root = tmp_path / "CARD"
    write_wav(root / "ok.wav", 1.0)
    locked = root / "locked"
    locked.mkdir()
    write_wav(locked / "x.wav", 1.0)
    locked.chmod(0)
    try:
        d = discover(root)
    finally:
        locked.chmod(0o755)
    assert "ok.wav" in [f.rel for f in d.recordings]
    if os.access(locked, os.R_OK) and os.geteuid() == 0:  # root reads through permissions: walked
        assert "locked/x.wav" in [f.rel for f in d.recordings]
    else:
        assert Skipped("locked", "folder could not be read (Permission denied)", "failed") in d.skipped


def test_missing_root_is_listed(tmp_path):
    d = discover(tmp_path / "nope")
    assert d == Discovery([], [Skipped(".", "folder could not be read (No such file or directory)", "failed")])


def test_extensions_follow_soundfile():
    exts = audio_extensions()
    assert {".wav", ".flac", ".aiff", ".ogg"} <= exts
    assert ".raw" not in exts and ".csv" not in exts and ".txt" not in exts
    assert (".mp3" in exts) == ("MP3" in sf.available_formats())


def test_extension_case_and_mp3(tmp_path):
    write_wav(tmp_path / "x.FLAC", 1.0, fmt="FLAC")
    write_wav(tmp_path / "y.Wav", 1.0)
    (tmp_path / "z.mp3").write_bytes(b"ID3" + b"\x00" * 64)
    rels = [f.rel for f in discover(tmp_path).recordings]
    assert rels[:2] == ["x.FLAC", "y.Wav"]
    assert ("z.mp3" in rels) == ("MP3" in sf.available_formats())
