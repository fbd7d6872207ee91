"""Typed, flat config objects, one per stage, and YAML loading where unknown keys fail.

Every stage has a frozen dataclass whose defaults are the product defaults. YAML files in
``configs/`` hold only what differs; ``from_dict`` rejects unknown keys with a message naming
the key and the section, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from monitor.errors import MonitorError

T = TypeVar("T")

MODEL_RATE_HZ = 16000  # the rate every model's front end runs at: waves are resampled to it before band and fbank


class ConfigError(MonitorError, ValueError):
    """A bad configuration; the message is one line that says what to fix."""


@dataclass(frozen=True)
class SegmentConfig:
    """How a recording is cut: ``window_s`` windows every ``hop_s``.

    A final partial window is kept (and padded by the feature step) when it holds at least
    ``min_segment_s`` of audio. ``block_s`` is how much audio the streaming reader holds at once.
    """

    window_s: float = 10.0
    hop_s: float = 10.0
    min_segment_s: float = 1.0
    block_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise ConfigError(f"segment.window_s must be > 0, got {self.window_s}")
        if not self.hop_s > 0:
            raise ConfigError(f"segment.hop_s must be > 0, got {self.hop_s}")
        if not 0 < self.min_segment_s <= self.window_s:
            raise ConfigError(
                f"segment.min_segment_s must be in (0, window_s={self.window_s}], got {self.min_segment_s}"
            )
        if not self.block_s > 0:
            raise ConfigError(f"segment.block_s must be > 0, got {self.block_s}")


@dataclass(frozen=True)
class BandConfig:
    """Zero-phase Butterworth band limit (SOS). ``None`` turns an edge off; both ``None`` = off."""

    low_hz: float | None = None
    high_hz: float | None = None
    order: int = 6

    def __post_init__(self) -> None:
        if self.low_hz is not None and self.low_hz < 0:
            raise ConfigError(f"band.low_hz must be >= 0 or null, got {self.low_hz}")
        if self.high_hz is not None and self.high_hz <= 0:
            raise ConfigError(f"band.high_hz must be > 0 or null, got {self.high_hz}")
        if self.low_hz is not None and self.high_hz is not None and self.low_hz >= self.high_hz:
            raise ConfigError(f"band.low_hz ({self.low_hz}) must be below band.high_hz ({self.high_hz})")
        if not 1 <= self.order <= 16:
            raise ConfigError(f"band.order must be in 1..16, got {self.order}")


@dataclass(frozen=True)
class ResampleConfig:
    """Target rate and method: ``poly`` (scipy.signal.resample_poly) or ``soxr`` if installed."""

    sample_rate_hz: int = MODEL_RATE_HZ
    method: str = "poly"

    def __post_init__(self) -> None:
        if self.sample_rate_hz <= 0:
            raise ConfigError(f"resample.sample_rate_hz must be > 0, got {self.sample_rate_hz}")
        if self.method not in ("poly", "soxr"):
            raise ConfigError(f"resample.method must be 'poly' or 'soxr', got {self.method!r}")


DEFAULT_THRESHOLD = 0.5  # a label's detection threshold when nothing calibrated one

# AudioSet statistics used by the official AST recipes.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


@dataclass(frozen=True)
class FbankConfig:
    """Kaldi-style log-mel fbank as AST expects it, plus frame padding and normalisation.

    Features are ``(x - norm_mean) / (2 * norm_std)`` after padding/cropping to ``target_frames``.
    """

    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    remove_wave_mean: bool = True
    target_frames: int = 1024
    norm_mean: float = AUDIOSET_MEAN
    norm_std: float = AUDIOSET_STD

    def __post_init__(self) -> None:
        if self.num_mel_bins <= 0:
            raise ConfigError(f"fbank.num_mel_bins must be > 0, got {self.num_mel_bins}")
        if self.target_frames <= 0:
            raise ConfigError(f"fbank.target_frames must be > 0, got {self.target_frames}")
        if not self.norm_std > 0:
            raise ConfigError(f"fbank.norm_std must be > 0, got {self.norm_std}")


@dataclass(frozen=True)
class Preprocess:
    """The whole front end: what a model bundle carries so training and inference match."""

    segment: SegmentConfig = field(default_factory=SegmentConfig)
    band: BandConfig = field(default_factory=BandConfig)
    resample: ResampleConfig = field(default_factory=ResampleConfig)
    fbank: FbankConfig = field(default_factory=FbankConfig)

    def __post_init__(self) -> None:
        nyquist = self.resample.sample_rate_hz / 2
        if self.band.low_hz is not None and self.band.low_hz >= nyquist:
            raise ConfigError(f"band.low_hz ({self.band.low_hz:g}) must be below the Nyquist frequency "
                              f"({nyquist:g} Hz) of resample.sample_rate_hz")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "preprocessing") -> "Preprocess":
        return from_dict(cls, data, where)


ENGINES = ("local", "ray")
PROGRESS_EVERY_S = 60.0  # without a terminal: a progress line at least this often (--progress-every)
STALL_WARN_S = 180.0  # --engine ray: no batch finished for this long prints what the run waits for (--stall-warn)
STALL_STOP_S = 1200.0  # ... and for this long stops the run, resumable (--stall-stop; 0: never)


def check_batch_size(batch_size: int | str) -> int | str:
    """``--batch-size``: a whole number >= 1 (an int, or its text) or ``auto``; else a one-line ``ConfigError``."""
    if batch_size == "auto":
        return batch_size
    ok = isinstance(batch_size, int) and not isinstance(batch_size, bool) or (
        isinstance(batch_size, str) and batch_size.strip().isdigit())
    if not ok or int(batch_size) < 1:
        raise ConfigError(f"--batch-size must be a whole number >= 1 or auto, got {batch_size!r}")
    return int(batch_size)


@dataclass(frozen=True)
class RunConfig:
    """Everything ``monitor run`` is told (the CLI's options; ``monitor.run(input_dir, out_dir, **options)``).

    ``models``: bundle names or folders, several average as an ensemble (default: the bundled demo model);
    ``thresholds``: label -> threshold (``all`` sets every label), kept in ``out_dir`` for later runs;
    ``labels``: labels kept in every output (``["all"]``: every label); ``deployment``: this card's
    deployment name; ``deployments``: a deployments table (CSV); ``resume=False`` re-scores this card's
    files; ``prune`` archives results of files no longer on the card; ``move`` re-files files already stored
    under another deployment (else refused); ``engine``: ``local`` or ``ray`` (``address``, ``actors``,
    ``gpus_per_actor``, ``stall_warn_s``, ``stall_stop_s`` are Ray's: None is ``STALL_WARN_S``/``STALL_STOP_S``);
    ``progress``: None shows a bar on a terminal and progress lines every ``progress_every_s`` elsewhere (0: no
    lines); ``embeddings``: keep each segment's embedding (None: as ``out_dir`` already does, kept for later runs);
    ``screen``: a distilled student bundle (``monitor distill``) that scores every segment first, the model
    only those it escalates (``monitor.cascade``).
    """

    input_dir: Path | str
    out_dir: Path | str
    models: Sequence[str] | None = None
    device: str = "auto"
    batch_size: int | str = "auto"
    workers: int | None = None
    precision: str = "auto"
    compile: bool = False
    thresholds: Mapping[str, float] | None = None
    labels: Sequence[str] | None = None
    deployment: str | None = None
    deployments: Path | str | None = None
    resume: bool = True
    prune: bool = False
    move: bool = False
    engine: str = "local"
    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    progress: bool | None = None
    progress_every_s: float = PROGRESS_EVERY_S
    stall_warn_s: float | None = None
    stall_stop_s: float | None = None
    command: str = ""
    embeddings: bool | None = None
    screen: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        ray_only = (self.address, self.actors, self.gpus_per_actor, self.stall_warn_s, self.stall_stop_s)
        if self.engine == "local" and ray_only != (None,) * len(ray_only):
            raise ConfigError("--address, --actors, --gpus-per-actor, --stall-warn and --stall-stop need --engine ray")
        if not self.progress_every_s >= 0:
            raise ConfigError(f"--progress-every must be >= 0 seconds (0: no progress lines), got {self.progress_every_s}")
        if self.stall_warn_s is not None and not self.stall_warn_s > 0:
            raise ConfigError(f"--stall-warn must be > 0 seconds, got {self.stall_warn_s}")
        if self.stall_stop_s is not None and not self.stall_stop_s >= 0:
            raise ConfigError(f"--stall-stop must be >= 0 seconds (0: never stop), got {self.stall_stop_s}")
        if self.engine == "ray" and self.compile:
            raise ConfigError("--compile is not supported with --engine ray yet")
        if self.engine == "ray" and self.workers is not None:
            raise ConfigError("--workers applies to --engine local; Ray schedules decode tasks itself")
        check_batch_size(self.batch_size)
        if self.embeddings:
            if self.engine == "ray":
                raise ConfigError("--embeddings works with --engine local only (not yet with Ray)")
            if self.precision == "int8" or self.compile:
                raise ConfigError("--embeddings does not apply to --precision int8 or --compile; drop one of them")
            if self.models is not None and len(self.models) > 1:
                raise ConfigError("--embeddings needs one --model (embeddings belong to one backbone), not an ensemble")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one YAML value against a field type (int/float/str/bool/None/unions/lists)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys raise ``ConfigError`` naming the key."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (allowed here: {', '.join(names)})"
        )
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass to plain dict (YAML/JSON ready)."""
    return dataclasses.asdict(obj)


def diff_from_defaults(obj: Any) -> dict[str, Any]:
    """Only the fields (recursively) that differ from the dataclass defaults."""
    out: dict[str, Any] = {}
    default = type(obj)()
    for f in dataclasses.fields(obj):
        value, ref = getattr(obj, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            sub = diff_from_defaults(value)
            if sub:
                out[f.name] = sub
        elif value != ref:
            out[f.name] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing/unparseable file is a one-line ``ConfigError``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} is not valid YAML; fix the syntax there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data
