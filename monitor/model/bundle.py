"""Model bundles: a folder with ``bundle.json`` (labels, task, geometry, the whole preprocessing,
thresholds, provenance) and ``model.safetensors``. Everything inference needs comes from here.

An *ensemble bundle* has no weights of its own: its ``ensemble`` section lists member bundles by path
(relative to its folder, or absolute) and sha256, and its labels, task, preprocessing and thresholds
(calibrated for the members' averaged score) are at the top level as for any bundle. Loading it loads
and verifies every member (a missing or changed member is a one-line ``BundleError``); its sha256 covers
its bundle.json with the members' hashes in sorted order, so it identifies the members whatever the order.

Loading reads only JSON and safetensors, validates every field (a wrong or missing one is a
one-line ``BundleError``), refuses file names that leave the folder, and checks every tensor's
name and shape against the declared architecture before any torch module is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from monitor.config import ConfigError, Preprocess
from monitor.errors import BundleError
from monitor.fileio import sha256_file
from monitor.model.ast import AST
from monitor.model.checkpoints import PRETRAINED, checkpoint_path
from monitor.model.geometry import Geometry, expected_shapes
from monitor.model.head import backbone_sha256
from monitor.model.labels import summarise
from monitor.model.safetensors_header import read_safetensors_header  # noqa: F401  (re-exported)
from monitor.model.screen import parse_screen
from monitor.resources import models_dir, monitor_cache

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_MODEL = "demo-frog-bird"
WEIGHTS = "model.safetensors"
TASKS = ("multilabel", "multiclass")
TOP_KEYS = ("format_version", "name", "version", "labels", "task", "architecture", "preprocessing", "thresholds",
            "weights", "provenance", "ensemble", "screen")
ENSEMBLE_KEYS = ("members", "thresholds", "thresholds_note", "combine")
DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


@dataclass
class Bundle:
    """A validated bundle; ``sha256`` covers the canonical bundle.json and the weights' bytes."""

    name: str
    version: str
    labels: list[str]
    task: str
    architecture: Geometry | None  # None for an ensemble bundle (each member has its own)
    preprocessing: Preprocess
    thresholds: dict[str, float]
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str = ""
    weights_file: str = WEIGHTS
    weights_dtype: str = "float32"
    weights_sha256: str = ""  # of model.safetensors; recorded in bundle.json and checked on load
    backbone_sha256: str = ""  # of the non-head tensors and the front end (``model.head``); see ``backbone``
    ensemble: dict[str, Any] | None = None  # an ensemble bundle's section as written (members by path and sha256)
    members: list["Bundle"] = field(default_factory=list)  # an ensemble's member bundles, loaded and verified
    screen: dict[str, Any] | None = None  # a distilled student's screen section (``monitor distill``), as written

    @property
    def is_ensemble(self) -> bool:
        return self.ensemble is not None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "labels": list(self.labels),
            "task": self.task,
        }
        if self.architecture is not None:
            d["architecture"] = self.architecture.to_dict()
        d["preprocessing"] = self.preprocessing.to_dict()
        d["thresholds"] = {k: float(v) for k, v in self.thresholds.items()}
        if self.is_ensemble:
            d["ensemble"] = self.ensemble
        else:
            d["weights"] = {"file": self.weights_file, "dtype": self.weights_dtype,
                            **({"sha256": self.weights_sha256} if self.weights_sha256 else {}),
                            **({"backbone_sha256": self.backbone_sha256} if self.backbone_sha256 else {})}
        d["provenance"] = self.provenance
        d.update({"screen": self.screen} if self.screen is not None else {})
        return d

    def build_model(self, device: str = "cpu"):
        """The AST with this bundle's weights (fp32 even if stored fp16), in eval mode on ``device``."""
        import torch
        from safetensors.torch import load_file

        if self.is_ensemble:
            raise BundleError(f"{self.name} is an ensemble of {len(self.members) or 'several'} bundles with no weights "
                              "of its own; monitor run averages its members (start training from one member)")
        if self.path is None:
            raise BundleError(f"bundle {self.name} has no folder to load weights from; save it first")
        with torch.device("meta"):  # shapes only: every weight comes from the file (base384: ~5 s of init saved)
            model = AST.from_geometry(self.architecture)
        sd = load_file(str(self.path / self.weights_file))
        ours = model.state_dict()
        bad = sorted(set(ours) ^ set(sd)) or [k for k in sd if sd[k].shape != ours[k].shape]
        if bad:
            raise BundleError(f"{self.path}: weights do not match the architecture (first: {bad[0]}); "
                              "the bundle is damaged or from another model")
        model.load_state_dict({k: v.to(torch.float32, copy=True) for k, v in sd.items()}, assign=True)
        return model.to(device).eval()

    def backbone(self) -> str:
        """``backbone_sha256``: recorded in bundle.json since monitor records it, else computed from the weights
        once (a bundle made by an older monitor). An ensemble has one only when it has one member."""
        if self.is_ensemble:
            if len(self.members) == 1:
                return self.members[0].backbone()
            raise BundleError(f"{self.name} is an ensemble of {len(self.members) or 'several'} bundles: no one backbone "
                              "(embeddings and heads belong to one)")
        if not self.backbone_sha256:
            from safetensors.torch import load_file

            if self.path is None:
                raise BundleError(f"bundle {self.name} has no folder to read weights from; save it first")
            sd = load_file(str(self.path / self.weights_file))
            self.backbone_sha256 = backbone_sha256(sd.items(), self.architecture.to_dict(),
                                                   self.preprocessing.to_dict())
        return self.backbone_sha256

    def head(self):
        """The head alone (``model.head.Head``, float64), read without the backbone's tensors."""
        from monitor.model.head import Head, head_tensors

        if self.is_ensemble or self.path is None:
            raise BundleError(f"{self.name} is an ensemble (its members have heads of their own) or was never saved")
        return Head.from_tensors(head_tensors(self.path / self.weights_file), self.architecture.head_norm_eps)


def _need(data: Mapping[str, Any], key: str, typ: type | tuple, where: str = "bundle.json") -> Any:
    if not isinstance(data, Mapping):
        raise BundleError(f"{where} must be a JSON object; re-export the bundle")
    if key not in data:
        raise BundleError(f"{where} is missing '{key}'; re-export the bundle or add the field")
    value = data[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ in (int, float) and isinstance(value, bool)):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        name = {"dict": "an object", "list": "a list", "str": "a string"}.get(name, name)
        raise BundleError(f"{where}: '{key}' must be {name}, got {value!r}")
    return value


def _inside(folder: Path, name: str) -> Path:
    p = (folder / name).resolve()
    if os.path.isabs(name) or not p.is_relative_to(folder.resolve()):
        raise BundleError(f"{folder}/bundle.json names a file outside the bundle folder ({name!r}); refusing it")
    return p


def check_geometry(model_size: str, fstride: int, tstride: int, input_fdim: int, input_tdim: int) -> None:
    """Raise a one-line ``BundleError`` for an impossible geometry (``Geometry``'s own checks)."""
    Geometry(model_size, 1, fstride, tstride, input_fdim, input_tdim, 1)


def _parse_arch(data: Mapping[str, Any], n_labels: int) -> Geometry:
    arch = Geometry.from_dict(_need(data, "architecture", dict))
    if arch.label_dim != n_labels:
        raise BundleError(f"bundle.json: architecture.label_dim {arch.label_dim} != {n_labels} labels")
    return arch


def parse_bundle(data: Mapping[str, Any], folder: Path | None = None) -> Bundle:
    """Validate a ``bundle.json`` mapping into a ``Bundle`` (no weights are read)."""
    if not isinstance(data, dict):
        raise BundleError("bundle.json must hold a JSON object")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise BundleError(f"bundle.json: unknown field '{unknown[0]}' (allowed: {', '.join(TOP_KEYS)})")
    fv = _need(data, "format_version", int)
    if fv != FORMAT_VERSION:
        raise BundleError(f"bundle.json format_version {fv} is not supported (this monitor reads {FORMAT_VERSION}); "
                          "upgrade monitor or re-export the bundle")
    name = _need(data, "name", str)
    version = _need(data, "version", str)
    labels = _need(data, "labels", list)
    if not labels or not all(isinstance(x, str) and x.strip() for x in labels) or len(set(labels)) != len(labels):
        raise BundleError("bundle.json: 'labels' must be a non-empty list of distinct names")
    task = _need(data, "task", str)
    if task not in TASKS:
        raise BundleError(f"bundle.json: 'task' must be one of {', '.join(TASKS)}, got {task!r}")
    ens = _parse_ensemble(data["ensemble"]) if "ensemble" in data else None
    arch = None if ens is not None and "architecture" not in data else _parse_arch(data, len(labels))
    try:
        pre = Preprocess.from_dict(_need(data, "preprocessing", dict))
    except ConfigError as exc:
        raise BundleError(f"bundle.json preprocessing: {exc}") from None
    if arch is not None and (pre.fbank.num_mel_bins != arch.input_fdim or pre.fbank.target_frames != arch.input_tdim):
        raise BundleError("bundle.json: preprocessing fbank (num_mel_bins, target_frames) must equal "
                          "architecture (input_fdim, input_tdim)")
    thr = _need(data, "thresholds", dict)
    if set(thr) != set(labels):
        missing = sorted(set(labels) - set(thr)) or sorted(set(thr) - set(labels))
        raise BundleError(f"bundle.json: 'thresholds' must have one value per label (check {missing[0]!r})")
    for k, v in thr.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise BundleError(f"bundle.json: threshold for {k!r} must be a number in 0..1, got {v!r}")
    screen = parse_screen(data["screen"], labels, ensemble="ensemble" in data) if "screen" in data else None
    if ens is not None:
        if "weights" in data:
            raise BundleError("bundle.json: an ensemble bundle has no weights of its own; drop 'weights' (its members "
                              "hold theirs)")
        prov = data.get("provenance", {})
        if not isinstance(prov, dict):
            raise BundleError("bundle.json: 'provenance' must be an object")
        return Bundle(name, version, list(labels), task, arch, pre, {k: float(v) for k, v in thr.items()}, prov,
                      folder, ensemble=ens)
    weights = data.get("weights", {"file": WEIGHTS, "dtype": "float32"})
    wfile = _need(weights, "file", str, "bundle.json weights")
    dtype = _need(weights, "dtype", str, "bundle.json weights")
    if dtype not in DTYPES:
        raise BundleError(f"bundle.json: weights dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    unknown_w = [k for k in weights if k not in ("file", "dtype", "sha256", "backbone_sha256")]
    if unknown_w:
        raise BundleError(f"bundle.json: unknown weights field '{unknown_w[0]}' (allowed: file, dtype, sha256, "
                          "backbone_sha256)")
    for key in ("sha256", "backbone_sha256"):
        if key in weights and not (isinstance(weights[key], str) and len(weights[key]) == 64):
            raise BundleError(f"bundle.json: weights {key} must be 64 hex digits")
    if folder is not None:
        _inside(folder, wfile)
    prov = data.get("provenance", {})
    if not isinstance(prov, dict):
        raise BundleError("bundle.json: 'provenance' must be an object")
    return Bundle(name, version, list(labels), task, arch, pre, {k: float(v) for k, v in thr.items()}, prov,
                  folder, weights_file=wfile, weights_dtype=dtype, backbone_sha256=weights.get("backbone_sha256", ""),
                  screen=screen)


def _parse_ensemble(ens: Any) -> dict[str, Any]:
    """Validate an ``ensemble`` section: members [{path, sha256}], thresholds (how they were chosen, in words)."""
    where = "bundle.json ensemble"
    if not isinstance(ens, dict):
        raise BundleError(f"{where} must be an object")
    unknown = [k for k in ens if k not in ENSEMBLE_KEYS]
    if unknown:
        raise BundleError(f"{where}: unknown field '{unknown[0]}' (allowed: {', '.join(ENSEMBLE_KEYS)})")
    members = _need(ens, "members", list, where)
    if not members:
        raise BundleError(f"{where}: 'members' must list at least one bundle")
    for m in members:
        _need(m, "path", str, f"{where} member")
        sha = _need(m, "sha256", str, f"{where} member")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise BundleError(f"{where}: member {m['path']!r} sha256 must be 64 hex digits")
    _need(ens, "thresholds", str, where)
    if ens.get("combine", "mean") != "mean":
        raise BundleError(f"{where}: combine {ens['combine']!r} is not supported (mean: the members' probabilities "
                          "averaged)")
    return dict(ens)


def _identity(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical bundle.json of an ensemble, member paths left out and their hashes sorted."""
    ens = dict(data["ensemble"])
    ens["members"] = sorted(m["sha256"] for m in ens["members"])
    return hashlib.sha256(json.dumps({**data, "ensemble": ens}, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


def member_path(folder: Path, path: str) -> Path:
    """An ensemble member's folder: absolute, or relative to the ensemble bundle's folder."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(os.path.normpath(Path(folder).absolute() / p))


def _load_members(b: Bundle, folder: Path) -> list[Bundle]:
    """Each member loaded, checked against its recorded sha256 and the ensemble's labels, task and preprocessing."""
    out = []
    for m in b.ensemble["members"]:  # type: ignore[index]
        p = member_path(folder, m["path"])
        if not (p / "bundle.json").is_file():
            raise BundleError(f"ensemble {folder}: member {m['path']} is missing ({p}); copy the whole run folder "
                              "(the ensemble and its member bundles) together")
        mb = _load(p, member=True)
        if mb.sha256 != m["sha256"]:
            raise BundleError(f"ensemble {folder}: member {m['path']} is not the bundle the ensemble was made with "
                              f"(sha256 {mb.sha256[:16]}..., bundle.json records {m['sha256'][:16]}...); "
                              "restore that member or train the ensemble again")
        if list(mb.labels) != list(b.labels) or mb.task != b.task or mb.preprocessing != b.preprocessing:
            raise BundleError(f"ensemble {folder}: member {m['path']} has other labels, task or preprocessing "
                              "than the ensemble")
        out.append(mb)
    return out


def bundle_search_path() -> list[Path]:
    """Where bundle names are looked up, in order: ``$MONITOR_MODELS``, the bundled models (inside the
    installed package, or a checkout's ``models/``), the cache."""
    paths = [Path(p).expanduser() for p in os.environ.get("MONITOR_MODELS", "").split(os.pathsep) if p]
    paths.append(models_dir())
    paths.append(monitor_cache() / "models")
    return paths


def resolve(name_or_path: str | Path) -> Path:
    """A bundle folder: an existing path, else a folder named NAME on ``bundle_search_path()``."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():  # a training run's folder: its exported bundle (an ensemble bundle for a k-fold run)
        return p / "bundle" if not (p / "bundle.json").is_file() and (p / "bundle" / "bundle.json").is_file() else p
    if p.is_file() and p.name == "bundle.json":
        return p.parent
    if p.is_file():
        raise BundleError(f"{p} is a file, not a model bundle folder; to use a checkpoint run "
                          f"`monitor models import {p} --labels LABELS --out DIR` first")
    name = str(name_or_path)
    if "/" not in name and os.sep not in name and name not in ("", ".", ".."):
        for base in bundle_search_path():
            if (base / name / "bundle.json").is_file():
                return base / name
    if name == DEFAULT_MODEL:
        raise BundleError(f"the bundled default model {DEFAULT_MODEL!r} is missing from this installation "
                          f"({models_dir()}); reinstall monitor, or pass --model NAME_OR_PATH")
    if name in PRETRAINED:  # a published checkpoint whose bundle is not made yet
        raise BundleError(f"{name} is a published AudioSet checkpoint that is not pulled yet; run "
                          f"`monitor models pull {name}` once (it downloads the checkpoint and makes its bundle)")
    raise BundleError(f"no model bundle {name!r} (looked in: {', '.join(map(str, bundle_search_path()))}); "
                      "see `monitor models list`")


def check_weights(b: Bundle, weights: Path) -> None:
    """Every tensor name, shape and dtype of ``weights`` must be what ``b.architecture`` declares."""
    header = read_safetensors_header(weights)
    want = expected_shapes(b.architecture)
    where = weights.parent
    for k in sorted(set(want) - set(header)):
        raise BundleError(f"{where}: weights lack tensor {k} that the architecture needs; the bundle is damaged "
                          "or its bundle.json belongs to another model")
    for k in sorted(set(header) - set(want)):
        raise BundleError(f"{where}: weights hold tensor {k} that the architecture does not have (depth "
                          f"{b.architecture.depth}?); the bundle.json belongs to another model")
    for k, shape in want.items():
        got = tuple(header[k].get("shape", ()))
        if got != shape:
            raise BundleError(f"{where}: tensor {k} has shape {list(got)}, the architecture needs {list(shape)}; "
                              "bundle.json and model.safetensors do not belong together")
        if header[k].get("dtype") != DTYPES[b.weights_dtype]:
            raise BundleError(f"{where}: tensor {k} is {header[k].get('dtype')}, bundle.json says {b.weights_dtype}")


def load_bundle(name_or_path: str | Path) -> Bundle:
    """Load and validate a bundle by folder path or by name (see ``bundle_search_path``); a training run's
    folder stands for its ``bundle/``. An ensemble bundle comes with its members loaded and verified."""
    return _load(resolve(name_or_path))


def _load(folder: Path, member: bool = False) -> Bundle:
    meta = folder / "bundle.json"
    if not meta.is_file():
        run = any((folder / n).exists() for n in ("config.yaml", "checkpoints", "splits.csv", "folds.csv"))
        raise BundleError(f"{folder} has no bundle.json: " + ("a training run that has not exported its bundle yet "
                          "(finish it with monitor train ... --resume)" if run else "not a model bundle"))
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta} is not valid JSON ({getattr(exc, 'msg', exc)}); fix or re-export it") from None
    b = parse_bundle(data, folder)
    if b.is_ensemble:
        if member:
            raise BundleError(f"{folder} is itself an ensemble bundle; an ensemble lists plain bundles as members")
        b.members = _load_members(b, folder)
        b.sha256 = _identity(data)
        return b
    weights = _inside(folder, b.weights_file)
    if not weights.is_file():
        raise BundleError(f"{folder} is missing its weights file {b.weights_file}; copy the whole bundle folder")
    check_weights(b, weights)
    recorded = (data.get("weights") or {}).get("sha256")
    ident = {**data, "weights": {k: v for k, v in (data.get("weights") or {}).items() if k != "sha256"}} \
        if "weights" in data else data
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode())
    w = hashlib.sha256()
    with open(weights, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            w.update(block)
    if recorded is None:
        log.warning("bundle %s records no weights hash (made by an older monitor): its weights cannot be checked",
                    folder)
    elif w.hexdigest() != recorded:
        raise BundleError(f"{weights} is damaged or was changed: its sha256 is {w.hexdigest()[:16]}..., bundle.json "
                          f"records {str(recorded)[:16]}...; copy the bundle again")
    b.sha256 = h.hexdigest()
    b.weights_sha256 = w.hexdigest()
    return b


def save_bundle(out_dir: str | Path, model, *, name: str, version: str, labels: list[str], task: str,
                preprocessing: Preprocess, thresholds: Mapping[str, float], provenance: Mapping[str, Any] | None = None,
                fp16: bool = False, screen: Mapping[str, Any] | None = None) -> Bundle:
    """Write ``bundle.json`` + ``model.safetensors`` (in a temp folder, then renamed); returns the loaded bundle.

    The architecture is ``model.geometry``. An existing bundle at ``out_dir`` is replaced (other
    files beside it are kept); a non-empty folder that is not a bundle is refused.
    """
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "bundle.json").is_file():
        raise BundleError(f"{out_dir} exists and is not a model bundle; choose a new or empty folder")
    arch = getattr(model, "geometry", None)
    if not isinstance(arch, Geometry):
        raise BundleError("save_bundle needs a monitor AST (model.geometry holds its shape)")
    b = Bundle(name, version, list(labels), task, arch, preprocessing,
               {k: float(thresholds[k]) for k in labels if k in thresholds}, dict(provenance or {}),
               weights_dtype="float16" if fp16 else "float32", screen=None if screen is None else dict(screen))
    parse_bundle(json.loads(json.dumps(b.to_json())))  # the same checks as on load, before writing anything
    dtype = torch.float16 if fp16 else torch.float32
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    b.backbone_sha256 = backbone_sha256(sd.items(), arch.to_dict(), preprocessing.to_dict())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(sd, str(tmp / WEIGHTS))
        b.weights_sha256 = sha256_file(tmp / WEIGHTS)
        (tmp / "bundle.json").write_text(json.dumps(b.to_json(), indent=2) + "\n", encoding="utf-8")
        if out_dir.is_dir():
            for p in out_dir.iterdir():  # keep files written beside the bundle (model card, curves)
                if p.name not in ("bundle.json", WEIGHTS):
                    shutil.move(str(p), tmp / p.name)
            old = out_dir.with_name(tmp.name + ".old")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_bundle(out_dir)


def list_models() -> list[dict[str, Any]]:
    """Bundles on the search path (first of a name wins) and the published checkpoints, cached or not.

    Each row: name, kind (bundle / bundle (invalid) / checkpoint), version, labels (up to 4, else the count
    and the first 3), path, default, cached (bool; bundles are always on disk).
    """
    rows, seen = [], set()
    for base in bundle_search_path():
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if not (d / "bundle.json").is_file() or d.name in seen:
                continue
            seen.add(d.name)
            row = {"name": d.name, "path": str(d), "default": d.name == DEFAULT_MODEL, "cached": True}
            try:
                b = load_bundle(d)
                short = len(b.labels) <= 4
                row.update(kind=f"ensemble ({len(b.members)})" if b.is_ensemble else "bundle", version=b.version,
                           labels=", ".join(b.labels) if short else summarise(b.labels, first=3))
            except BundleError as exc:
                row.update(kind="bundle (invalid)", version="", labels=str(exc))
            rows.append(row)
    for key, spec in PRETRAINED.items():
        p = checkpoint_path(key)
        if p.is_file():
            where = str(p) if key in seen else f"{p} (no bundle yet: monitor models pull {key})"
        else:
            where = f"(not downloaded: monitor models pull {key})"
        rows.append({"name": key, "kind": "checkpoint", "version": f"mAP {spec.map:.4f}",
                     "labels": f"{spec.label_dim} AudioSet classes", "default": False,
                     "cached": p.is_file(), "path": where})
    return rows
