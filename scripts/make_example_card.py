"""Build ``examples/sdcard/``: a small SD card laid out like real AudioMoth and Song Meter cards.

Only redistributable audio goes in (see ``examples/ATTRIBUTION.md``):
- real recorder files from ../shared/data/recordings (OpenSoundscape: MIT; scikit-maad: BSD-3-Clause);
- a public-domain USGS ARMI frog clip from ../shared/data/clips, written as an AudioMoth 1.10.1 WAV
  with a real-layout comment (fixed-size NUL-padded ICMT), IART, GUANO, and an AudioMoth file name;
- the OpenSoundscape birdsong recording, re-written the same way as a dawn recording;
- a macOS ``._`` file, an empty file and the recorder's CONFIG.TXT, so the report shows skipped files.

    python scripts/make_example_card.py [--shared ../shared] [--out examples/sdcard]
"""

from __future__ import annotations

import argparse
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FROG = "frog/spring-peeper__spring-peeper-1.mp3"  # USGS ARMI, public domain
BIRD = "recordings/opensoundscape/birds_10s.wav"  # OpenSoundscape test recording, MIT


def audiomoth_wav(path: Path, samples: np.ndarray, sr: int, start: datetime, device: str, temperature_c: float,
                  battery_v: float) -> None:
    from monitor.metadata.audiomoth import format_comment
    from monitor.metadata.riff import chunk, info_list, write_wav_with_chunks

    comment = format_comment(start, device, gain="medium", battery_v=battery_v, temperature_c=temperature_c)
    icmt = (comment.encode() + b"\x00").ljust(384, b"\x00")
    guan = (f"GUANO|Version:1.0\nMake:Open Acoustic Devices\nModel:AudioMoth\nSerial:{device}\n"
            f"Firmware Version:1.10.1\nTimestamp:{start.isoformat()}\nTemperature Int:{temperature_c:.1f}\n"
            f"OAD|Battery Voltage:{battery_v:.1f}\nOriginal Filename:{path.name}\n")
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    write_wav_with_chunks(path, pcm, sr, before_data=[info_list({"ICMT": icmt, "IART": f"AudioMoth {device}".encode() + b"\x00"})],
                          after_data=[chunk("guan", guan.encode())], pad_last=False)


def load_mono(path: Path, sr_out: int) -> np.ndarray:
    import soundfile as sf

    from monitor.audio import resample, to_mono

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = to_mono(x)
    x = resample(x, sr, sr_out) if sr != sr_out else x
    return 0.9 * x / max(1e-6, float(np.abs(x).max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "examples" / "sdcard")
    args = ap.parse_args()
    data = args.shared / "data"
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    pond, meadow, old = out / "AM-POND", out / "SM4-MEADOW", out / "AM-2018"
    for d in (pond, meadow, old):
        d.mkdir(parents=True)

    edt = timezone(timedelta(hours=-4))
    frog_start = datetime(2024, 4, 12, 21, 15, 0, tzinfo=edt)
    audiomoth_wav(pond / f"{frog_start:%Y%m%d_%H%M%S}.WAV", load_mono(data / "clips" / FROG, 48000), 48000,
                  frog_start, "24E144055E080032", 11.5, 4.1)
    bird_start = datetime(2024, 4, 13, 6, 0, 0, tzinfo=edt)
    audiomoth_wav(pond / f"{bird_start:%Y%m%d_%H%M%S}.WAV", load_mono(data / BIRD, 48000), 48000, bird_start,
                  "24E144055E080032", 7.0, 4.0)
    (pond / "CONFIG.TXT").write_text("Device ID                       : 24E144055E080032\nFirmware                        : "
                                     "AudioMoth-Firmware-Basic (1.10.1)\nTime zone                       : UTC-4\n"
                                     "Sample rate (Hz)                : 48000\nGain                            : Medium\n")
    (pond / f"._{frog_start:%Y%m%d_%H%M%S}.WAV").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "
                                                             + b"\x00" * 64)
    # a real firmware-1.0 AudioMoth recording (LIST after data, id3), named as 1.0 named files: hex UTC time
    start = int(datetime(2018, 5, 4, 9, 32, tzinfo=timezone.utc).timestamp())
    shutil.copy(data / "recordings" / "opensoundscape" / "1min.wav", old / f"{start:08X}.WAV")
    shutil.copy(data / "recordings" / "opensoundscape" / "metadata.wav", old / "20200404_102500.WAV")
    for name in ("S4A03895_20190522_060000.wav", "S4A03895_20190522_080000.wav"):
        shutil.copy(data / "recordings" / "scikit-maad" / name, meadow / name)
    (meadow / "S4A03895_20190522_100000.wav").write_bytes(b"")  # a write that never happened: 0 bytes
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"example card: {sum(1 for p in out.rglob('*') if p.is_file())} files, {total / 1e6:.1f} MB in {out}")


if __name__ == "__main__":
    main()
