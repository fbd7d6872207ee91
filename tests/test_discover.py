"""Discovery: sorted, recursive, and every oddity listed with a reason."""

import os

from conftest import write_wav
from monitor.discover import discover


def test_lists_every_oddity_in_sorted_order(tmp_path):
    root = tmp_path / "CARD"
    write_wav(root / "b" / "2.WAV", 1.0)
    write_wav(root / "b" / "10.wav", 1.0)
    write_wav(root / "a.flac", 1.0, fmt="FLAC", subtype="PCM_16")
    (root / "b" / "._2.WAV").write_bytes(b"\x00\x05\x16\x07")
    (root / ".hidden.wav").write_bytes(b"RIFF")
    (root / ".Trashes").mkdir()
    write_wav(root / ".Trashes" / "x.wav", 1.0)
    (root / "empty.wav").write_bytes(b"")
    (root / "CONFIG.TXT").write_text("gain 2")
    os.symlink(str(root), root / "b" / "loop")
    d = discover(root)
    assert [f.rel for f in d.recordings] == ["a.flac", "b/10.wav", "b/2.WAV"]
    reasons = {s.rel: s.reason for s in d.skipped}
    assert "AppleDouble" in reasons["b/._2.WAV"]
    assert "hidden" in reasons[".hidden.wav"]
    assert "hidden folder" in reasons[".Trashes"]
    assert "empty" in reasons["empty.wav"]
    assert "not an audio file" in reasons["CONFIG.TXT"]
    assert "loops back" in reasons["b/loop"]
    assert all(r.size > 0 and r.mtime_ns > 0 for r in d.recordings)
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
    if os.geteuid() != 0:  # root reads through permissions; then the folder is simply walked
        assert any(s.rel == "locked" and s.status == "failed" for s in d.skipped)
    else:
        assert "locked/x.wav" in [f.rel for f in d.recordings]


def test_missing_root_is_listed(tmp_path):
    d = discover(tmp_path / "nope")
    assert d.recordings == [] and d.skipped[0].status == "failed"
