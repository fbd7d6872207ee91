"""Typed training recipe: flat sections, defaults = product defaults, unknown keys fail.

A recipe YAML holds only what differs from these defaults. Top-level sections are the training
ones below plus the front end's ``segment``, ``band``, ``resample`` and ``fbank`` (the very
``Preprocess`` that the exported bundle carries). Paths in a YAML file are relative to its folder.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.config import (DEFAULT_THRESHOLD, BandConfig, ConfigError, FbankConfig, Preprocess, ResampleConfig,
                            SegmentConfig, from_dict, load_yaml)

log = logging.getLogger(__name__)

SOURCES = ("folders", "annotations", "manifest", "report", "embeddings")
SOURCE_ALIASES = {"folder": "folders", "annotation": "annotations", "raven": "annotations", "reviews": "report",
                  "reviewed": "report", "workbook": "report", "ast_json": "manifest", "json": "manifest"}
NORM_STATS = ("auto", "train", "config", "bundle")
MIN_CLIP_S = 0.25  # data.min_clip_s: shorter recordings are left out of training (and counted)


@dataclass(frozen=True)
class DataConfig:
    """Where labelled audio comes from (``source``) and how it is cut into segments."""

    source: str = "folders"  # folders | annotations | manifest | report | embeddings (aliases: raven, ast_json, ...)
    root: str | None = None  # folders: data/<label>/*; annotations/report: the recordings' folder
    labels: list[str] | None = None  # label order; default: sorted names found
    negative_class: str | None = None  # folders: this folder's segments carry no label (multilabel)
    exclude: list[str] = field(default_factory=list)  # folder names to ignore (e.g. _background_noise_)
    annotations: str | None = None  # a Raven/Audacity/CSV table or a folder of them
    min_overlap_s: float = 0.5  # an annotation labels a window it overlaps by this much ...
    min_overlap_frac: float = 0.5  # ... or by this fraction of the annotation's own length
    unannotated_negative: bool = True  # windows that no annotation touches become negatives
    manifest: str | None = None  # official AST JSON manifest {"data": [{"wav", "labels"}]}
    val_manifest: str | None = None  # optional: a fixed validation manifest (no split of the train one)
    label_csv: str | None = None  # class_labels_indices.csv (index,mid,display_name)
    report: str | None = None  # a reviewed report.xlsx, or a `monitor run` output folder (its stored reviews)
    # embeddings: a head on the stored embeddings of a `monitor run --embeddings` output folder and its verdicts
    out: str | None = None  # that output folder
    weak_negatives: int = 0  # embeddings: this many unreviewed segments (at random) count as absent for every label
    weak_negative_weight: float = 0.1  # ... each weighing this much in the loss (a verdict weighs 1)
    extend_head: bool = False  # embeddings: keep the model's labels (their head rows and thresholds) and add the new
    group_regex: str | None = None  # group = first match group on the relative path (default: the file)
    max_per_label: int | None = None  # cap segments per label (quick experiments, tests)
    # a recording shorter than segment.min_segment_s (which monitor run skips) trains as one window padded to
    # the segment length when it holds at least this much audio; shorter ones are left out (and counted)
    min_clip_s: float = MIN_CLIP_S
    # auto: the bundle's for init: bundle, else train; train: mean/std of the training split (all folds
    # together with --folds, so fold models share preprocessing); config: fbank.norm_mean/std; bundle
    norm_stats: str = "auto"
    cache_dir: str | bool | None = "auto"  # on-disk fbank cache: auto = <out>/fbank_cache; a folder; off (false, null)
    num_workers: int | str = "auto"  # DataLoader workers; auto: up to 4 with a GPU, 0 on a small CPU

    def __post_init__(self) -> None:
        if self.source in SOURCE_ALIASES:
            object.__setattr__(self, "source", SOURCE_ALIASES[self.source])
        if isinstance(self.cache_dir, bool) or self.cache_dir is None:  # YAML reads a bare off/on as a boolean
            object.__setattr__(self, "cache_dir", "auto" if self.cache_dir is True else "off")
        if self.source not in SOURCES:
            raise ConfigError(f"data.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.norm_stats not in NORM_STATS:
            raise ConfigError(f"data.norm_stats must be one of {', '.join(NORM_STATS)}, got {self.norm_stats!r}")
        if isinstance(self.num_workers, str) and self.num_workers != "auto" or \
                isinstance(self.num_workers, int) and self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be auto or a number >= 0, got {self.num_workers!r}")
        if not self.min_clip_s > 0:
            raise ConfigError(f"data.min_clip_s must be > 0 seconds, got {self.min_clip_s}")
        if self.min_overlap_s < 0 or not 0 <= self.min_overlap_frac <= 1:
            raise ConfigError("data.min_overlap_s must be >= 0 and data.min_overlap_frac in 0..1")
        if self.weak_negatives < 0 or not 0 < self.weak_negative_weight <= 1:
            raise ConfigError("data.weak_negatives must be >= 0 and data.weak_negative_weight in (0, 1]")


@dataclass(frozen=True)
class SplitConfig:
    """Grouped, stratified, seeded split; segments of one group never share two splits.

    The optional test split (``test_files``, ``test_fraction`` or ``test_folder``) is held out first
    and never used to pick epochs or thresholds; it is scored once, at the end, and reported apart.
    """

    val_fraction: float = 0.2
    seed: int = 0
    val_files: str | None = None  # a text file of relative paths forming the validation split
    test_fraction: float = 0.0  # grouped fraction held out as the test split
    test_files: str | None = None  # a text file of relative paths forming the test split
    test_folder: str | None = None  # a folder laid out like data.root whose audio forms the test split
    final_model: bool = False  # --folds: then train one model on all (non-test) data for the chosen epochs
    warn_clip_names: bool = True  # warn when names like rec_01/rec_02 (clips of one recording?) cross splits

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"split.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.test_fraction < 1 or self.val_fraction + self.test_fraction >= 1:
            raise ConfigError("split.test_fraction must be in [0, 1) and leave training data beside val_fraction")
        if sum(x is not None and x != 0 for x in (self.test_files, self.test_folder, self.test_fraction or None)) > 1:
            raise ConfigError("give one of split.test_files, split.test_fraction, split.test_folder")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and initialisation."""

    size: str = "base384"
    depth: int | None = None
    fstride: int = 10
    tstride: int = 10
    init: str = "audioset"  # audioset | hf | imagenet | scratch | bundle
    checkpoint: str | None = None  # audioset: pull name or .pth; hf: folder; imagenet: weights file; bundle: path
    drop_path_rate: float = 0.0
    freeze: str = "full"  # full | head | last_n
    train_last_n: int = 2  # blocks trained with freeze: last_n
    cache_embeddings: bool = True  # freeze: head: run the frozen backbone once per segment, train the head on that

    def __post_init__(self) -> None:
        if self.init not in ("audioset", "hf", "imagenet", "scratch", "bundle"):
            raise ConfigError(f"model.init must be audioset, hf, imagenet, scratch or bundle, got {self.init!r}")
        if self.freeze not in ("full", "head", "last_n"):
            raise ConfigError(f"model.freeze must be full, head or last_n, got {self.freeze!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only augmentation (see ``augment.py`` for the order)."""

    freqm: int = 0  # SpecAugment: max mel bins masked
    timem: int = 0  # SpecAugment: max frames masked
    mixup: float = 0.0  # fraction of samples mixed with another
    mixup_alpha: float = 10.0  # Beta(alpha, alpha)
    noise: bool = False  # official: + U(0,1) * U(0,1) * noise_scale, then a random roll in time
    noise_scale: float = 0.1
    time_shift_frames: int = 10  # roll by up to this many frames (with noise, as the official recipe)
    gain_db: float = 0.0  # random gain in [-gain_db, +gain_db]


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adamw"  # adam | adamw
    lr: float = 1e-5
    weight_decay: float = 5e-7
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    head_lr_mult: float = 1.0
    warmup_steps: int = 0  # linear warmup; longer than the run: clamped to a tenth of it, with a warning
    warmup_fraction: float = 0.0  # warmup as a fraction of all optimiser steps (instead of warmup_steps)
    scheduler: str = "multistep"  # multistep | cosine | constant
    lr_decay_start_epoch: int = 2  # multistep: the first epoch (0-based) at lr * decay
    lr_decay_every: int = 1
    lr_decay: float = 0.5
    min_lr_frac: float = 0.0  # cosine floor as a fraction of the base LR
    epochs: int = 10
    batch_size: int = 12
    accum_steps: int = 1
    grad_clip: float | None = None
    amp: str = "auto"  # auto (monitor.device's rule: bf16 from compute capability 8.0, fp16 below, fp32 on CPU) | bf16 | fp16 | off
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    checkpoint_every_s: float = 300.0  # also checkpoint mid-epoch this often (seconds; 0: after every step)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optim.optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.scheduler not in ("multistep", "cosine", "constant"):
            raise ConfigError(f"optim.scheduler must be multistep, cosine or constant, got {self.scheduler!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"optim.amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.accum_steps < 1:
            raise ConfigError("optim.epochs, optim.batch_size and optim.accum_steps must be >= 1")
        if len(self.betas) != 2:
            raise ConfigError("optim.betas must be two numbers")
        if not 0 <= self.warmup_fraction < 1 or self.warmup_steps < 0:
            raise ConfigError("optim.warmup_fraction must be in [0, 1) and optim.warmup_steps >= 0")
        if self.warmup_fraction and self.warmup_steps:
            raise ConfigError("give optim.warmup_steps or optim.warmup_fraction, not both")
        if self.checkpoint_every_s < 0:
            raise ConfigError("optim.checkpoint_every_s must be >= 0")


@dataclass(frozen=True)
class LossConfig:
    """``bce`` = multilabel task, ``ce`` = multiclass; class-balanced sampling as official gen_weight_file."""

    kind: str = "bce"  # bce | ce
    label_smoothing: float = 0.0
    focal_gamma: float = 0.0  # > 0: focal BCE
    balanced_sampling: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("bce", "ce"):
            raise ConfigError(f"loss.kind must be bce or ce, got {self.kind!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("loss.label_smoothing must be in [0, 1)")


METRICS = ("mAP", "mAUC", "d_prime", "accuracy", "exact_match", "val_loss", "macro_f1")


@dataclass(frozen=True)
class EvalConfig:
    """How epochs are chosen. ``accuracy`` is argmax accuracy (official AST) over single-label segments;
    ``exact_match`` (multilabel) needs every known label right at ``threshold``. A metric that is
    undefined on the validation split (no positives) falls back to ``val_loss``."""

    metric: str = "mAP"  # mAP | mAUC | d_prime | accuracy | exact_match | val_loss | macro_f1
    patience: int | None = None  # early stopping: stop after this many epochs without improvement (as Keras)
    threshold: float = DEFAULT_THRESHOLD  # for per-label P/R/F1 during training
    average_from_epoch: int | None = None  # rolling weight average over epochs [from, to] (1-based, official wa)
    average_to_epoch: int | None = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"eval.metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError("eval.patience must be >= 1 (or null: no early stopping)")


@dataclass(frozen=True)
class CalibrateConfig:
    method: str = "f1"  # f1 (max F1) | precision (lowest threshold reaching `precision`) | fixed
    precision: float = 0.9
    default: float = DEFAULT_THRESHOLD  # labels that cannot be calibrated (no positives in validation)

    def __post_init__(self) -> None:
        if self.method not in ("f1", "precision", "fixed"):
            raise ConfigError(f"calibrate.method must be f1, precision or fixed, got {self.method!r}")


@dataclass(frozen=True)
class ExportConfig:
    name: str | None = None  # default: the config file's stem
    version: str = "1.0.0"
    weights: str = "auto"  # auto (averaged if configured, else best; --folds: last) | best | last | averaged
    fp16: bool = False
    keep_checkpoint: bool = False  # keep checkpoints/ (resume state, ~3x the model) after the bundle is exported
    intended_use: str = "Research and monitoring; verify detections before drawing conclusions."
    plots: bool = True

    def __post_init__(self) -> None:
        if self.weights not in ("auto", "best", "last", "averaged"):
            raise ConfigError(f"export.weights must be auto, best, last or averaged, got {self.weights!r}")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    band: BandConfig = field(default_factory=BandConfig)
    resample: ResampleConfig = field(default_factory=ResampleConfig)
    fbank: FbankConfig = field(default_factory=FbankConfig)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.segment, self.band, self.resample, self.fbank)

    @property
    def task(self) -> str:
        return "multiclass" if self.loss.kind == "ce" else "multilabel"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PATH_KEYS = {"data": ("root", "annotations", "manifest", "val_manifest", "label_csv", "report", "cache_dir", "out"),
             "split": ("val_files", "test_files", "test_folder"), "model": ("checkpoint",)}
NOT_PATHS = {("data", "cache_dir"): ("auto", "off")}


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative path values absolute against ``base`` (pull names like audioset-10-10 stay as they are)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section, keys in PATH_KEYS.items():
        sec = out.get(section)
        if not isinstance(sec, dict):
            continue
        for key in keys:
            val = sec.get(key)
            if val in NOT_PATHS.get((section, key), ()):
                continue
            if isinstance(val, str) and val and not Path(val).expanduser().is_absolute():
                cand = (base / val).resolve()
                if section == "model" and not cand.exists() and "/" not in val and "\\" not in val:
                    continue  # a name to pull, not a path
                sec[key] = str(cand)
            elif isinstance(val, str):
                sec[key] = str(Path(val).expanduser())
    return out


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` (value in YAML syntax) -> (section, key, value)."""
    import yaml

    lhs, sep, rhs = text.partition("=")
    section, dot, key = lhs.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(rhs) if rhs.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {lhs}: {rhs!r} is not a YAML value") from None
    return section, key, value


def build_config(raw: dict[str, Any], base_dir: Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A ``TrainConfig`` from a section mapping; paths relative to ``base_dir``, ``--set`` ones to the cwd."""
    raw = _resolve_paths(raw or {}, Path(base_dir or ".").resolve())
    extra: dict[str, Any] = {}
    for text in overrides or []:
        section, key, value = parse_override(text)
        extra.setdefault(section, {})[key] = value
    extra = _resolve_paths(extra, Path.cwd())
    for section, values in extra.items():
        if section not in raw or raw[section] is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise ConfigError(f"section '{section}' must be a mapping")
        raw[section].update(values)
    return from_dict(TrainConfig, raw, "")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a recipe YAML (only what differs from defaults; unknown keys fail naming the key)."""
    path = Path(path)
    return build_config(load_yaml(path), path.parent, overrides)


def config_yaml(cfg: TrainConfig) -> str:
    """The fully resolved config as YAML (saved with every run)."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def cache_dir_for(cfg: TrainConfig, out_dir: Path) -> str | None:
    """The fbank cache folder of a run: ``auto`` -> ``<out_dir>/fbank_cache``; ``off``/null -> None."""
    c = cfg.data.cache_dir
    if c is None or c == "off":
        return None
    if c == "auto":
        return str(Path(out_dir) / "fbank_cache")
    return c


WARMUP_CLAMP = 0.1  # a warmup as long as the run (or longer) is clamped to this fraction of it


def warmup_steps(o: OptimConfig, steps_per_epoch: int) -> int:
    """Warmup length in optimiser steps: ``warmup_fraction`` of the whole run, or ``warmup_steps``; a
    ``warmup_steps`` as long as the run or longer (the LR would never reach its peak, the schedule never
    start) is clamped to a tenth of the run (``warmup_clamped`` says so)."""
    total = o.epochs * steps_per_epoch
    if o.warmup_fraction > 0:
        return max(1, int(round(o.warmup_fraction * total)))
    if warmup_clamped(o, steps_per_epoch):
        return max(1, int(round(WARMUP_CLAMP * total)))
    return o.warmup_steps


def warmup_clamped(o: OptimConfig, steps_per_epoch: int) -> bool:
    """True when ``optim.warmup_steps`` is at least the run's length in optimiser steps."""
    return o.warmup_fraction == 0 and o.warmup_steps > 0 and o.warmup_steps >= o.epochs * steps_per_epoch
