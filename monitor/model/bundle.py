"""Model bundles: a folder with ``bundle.json`` (labels, task, geometry, the whole preprocessing,
thresholds, provenance) and ``model.safetensors``. Everything inference needs comes from here.

Loading reads only JSON and safetensors, validates every field (a wrong or missing one is a
one-line ``BundleError``), refuses file names that leave the folder, and checks every tensor's
name and shape against the declared architecture before building the model.
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

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_MODEL = "demo-frog-bird"
WEIGHTS = "model.safetensors"
TASKS = ("multilabel", "multiclass")
ARCH_KEYS = {"model_size": str, "depth": int, "fstride": int, "tstride": int, "input_fdim": int, "input_tdim": int,
             "label_dim": int, "norm_eps": float, "head_norm_eps": float}


@dataclass
class Bundle:
    name: str
    version: str
    labels: list[str]
    task: str
    architecture: dict[str, Any]
    preprocessing: Preprocess
    thresholds: dict[str, float]
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str = ""
    weights_file: str = WEIGHTS
    weights_dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "labels": list(self.labels),
            "task": self.task,
            "architecture": dict(self.architecture),
            "preprocessing": self.preprocessing.to_dict(),
            "thresholds": {k: float(v) for k, v in self.thresholds.items()},
            "weights": {"file": self.weights_file, "dtype": self.weights_dtype},
            "provenance": self.provenance,
        }

    def build_model(self, device: str = "cpu"):
        """The AST with this bundle's weights (fp32 even if stored fp16), in eval mode."""
        import torch
        from safetensors.torch import load_file

        from monitor.model.ast import AST

        if self.path is None:
            raise BundleError(f"bundle {self.name} has no folder to load weights from")
        a = self.architecture
        model = AST(a["label_dim"], a["fstride"], a["tstride"], a["input_fdim"], a["input_tdim"], a["model_size"],
                    depth=a["depth"], norm_eps=a.get("norm_eps", 1e-6), head_norm_eps=a.get("head_norm_eps", 1e-5))
        sd = load_file(str(self.path / self.weights_file))
        expected = model.state_dict()
        missing = sorted(set(expected) - set(sd))
        extra = sorted(set(sd) - set(expected))
        if missing or extra:
            raise BundleError(f"{self.path}: weights do not match the architecture (missing {missing[:2]}, "
                              f"unexpected {extra[:2]}); the bundle is damaged or from another model")
        for k, t in sd.items():
            if tuple(t.shape) != tuple(expected[k].shape):
                raise BundleError(f"{self.path}: tensor {k} has shape {tuple(t.shape)}, the architecture needs "
                                  f"{tuple(expected[k].shape)}")
        model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()})
        return model.to(device).eval()

    def scores(self, logits):
        """Logits -> probabilities: sigmoid (multilabel) or softmax (multiclass)."""
        import torch

        return torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, dim=-1)


def _need(data: Mapping[str, Any], key: str, typ: type | tuple, where: str = "bundle.json") -> Any:
    if key not in data:
        raise BundleError(f"{where} is missing '{key}'; re-export the bundle or add the field")
    value = data[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise BundleError(f"{where}: '{key}' must be {name}, got {value!r}")
    return value


def _inside(folder: Path, name: str) -> Path:
    p = (folder / name).resolve()
    if not p.is_relative_to(folder.resolve()) or os.path.isabs(name):
        raise BundleError(f"{folder}/bundle.json names a file outside the bundle folder ({name!r}); refusing it")
    return p


def parse_bundle(data: Mapping[str, Any], folder: Path | None = None) -> Bundle:
    """Validate a ``bundle.json`` mapping into a ``Bundle``."""
    if not isinstance(data, dict):
        raise BundleError("bundle.json must hold a JSON object")
    fv = _need(data, "format_version", int)
    if fv != FORMAT_VERSION:
        raise BundleError(f"bundle.json format_version {fv} is not supported (this monitor reads {FORMAT_VERSION})")
    name = _need(data, "name", str)
    version = _need(data, "version", str)
    labels = _need(data, "labels", list)
    if not labels or not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
        raise BundleError("bundle.json: 'labels' must be a non-empty list of distinct names")
    task = _need(data, "task", str)
    if task not in TASKS:
        raise BundleError(f"bundle.json: 'task' must be one of {TASKS}, got {task!r}")
    arch = dict(_need(data, "architecture", dict))
    for key, typ in ARCH_KEYS.items():
        if key in ("norm_eps", "head_norm_eps") and key not in arch:
            continue
        arch[key] = _need(arch, key, typ, "bundle.json architecture")
    if arch["label_dim"] != len(labels):
        raise BundleError(f"bundle.json: architecture.label_dim {arch['label_dim']} != {len(labels)} labels")
    from monitor.model.checkpoints import check_geometry

    check_geometry(arch["model_size"], arch["fstride"], arch["tstride"], arch["input_fdim"], arch["input_tdim"])
    try:
        pre = Preprocess.from_dict(_need(data, "preprocessing", dict))
    except ConfigError as exc:
        raise BundleError(f"bundle.json preprocessing: {exc}") from None
    if pre.fbank.num_mel_bins != arch["input_fdim"] or pre.fbank.target_frames != arch["input_tdim"]:
        raise BundleError("bundle.json: preprocessing fbank (num_mel_bins, target_frames) must equal "
                          "architecture (input_fdim, input_tdim)")
    thr = _need(data, "thresholds", dict)
    if set(thr) != set(labels):
        raise BundleError(f"bundle.json: 'thresholds' must have one value per label ({', '.join(labels)})")
    for k, v in thr.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise BundleError(f"bundle.json: threshold for {k!r} must be a number in 0..1, got {v!r}")
    weights = data.get("weights", {"file": WEIGHTS, "dtype": "float32"})
    wfile = _need(weights, "file", str, "bundle.json weights")
    if folder is not None:
        _inside(folder, wfile)
    prov = data.get("provenance", {})
    if not isinstance(prov, dict):
        raise BundleError("bundle.json: 'provenance' must be an object")
    return Bundle(name, version, list(labels), task, arch, pre, {k: float(v) for k, v in thr.items()}, prov,
                  folder, weights_file=wfile, weights_dtype=str(weights.get("dtype", "float32")))


def bundle_search_path() -> list[Path]:
    """Where bundle names are looked up: ``$MONITOR_MODELS``, the repo's ``models/``, the cache."""
    from monitor.model.checkpoints import cache_dir

    paths = []
    if os.environ.get("MONITOR_MODELS"):
        paths += [Path(p) for p in os.environ["MONITOR_MODELS"].split(os.pathsep) if p]
    import monitor

    paths.append(Path(monitor.__file__).resolve().parents[1] / "models")
    paths.append(cache_dir() / "models")
    return paths


def resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if p.is_file() and p.name == "bundle.json":
        return p.parent
    if p.is_file():
        raise BundleError(f"{p} is a file, not a model bundle folder; to use a checkpoint run "
                          f"`monitor models import {p} --labels LABELS --out DIR` first")
    for base in bundle_search_path():
        if (base / str(name_or_path) / "bundle.json").is_file():
            return base / str(name_or_path)
    if str(name_or_path) == DEFAULT_MODEL:
        raise BundleError(f"the bundled default model {DEFAULT_MODEL!r} is not installed here; pass --model "
                          "PATH_TO_BUNDLE, or train one with `monitor train configs/demo.yaml`")
    raise BundleError(f"no model bundle {str(name_or_path)!r} (looked in: {', '.join(map(str, bundle_search_path()))}); "
                      "see `monitor models list`")


def load_bundle(name_or_path: str | Path) -> Bundle:
    """Load and validate a bundle by folder path or by name (see ``bundle_search_path``)."""
    folder = resolve(name_or_path)
    meta = folder / "bundle.json"
    if not meta.is_file():
        raise BundleError(f"{folder} has no bundle.json: not a model bundle")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    b = parse_bundle(data, folder)
    weights = _inside(folder, b.weights_file)
    if not weights.is_file():
        raise BundleError(f"{folder} is missing its weights file {b.weights_file}")
    _check_tensor_shapes(b, weights)
    h = hashlib.sha256()
    h.update(json.dumps(data, sort_keys=True).encode())
    with open(weights, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    b.sha256 = h.hexdigest()
    return b


def _check_tensor_shapes(b: Bundle, weights: Path) -> None:
    """Compare the safetensors header (names, shapes) with the architecture, without building torch modules."""
    import struct

    try:
        with open(weights, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(fh.read(n))
    except Exception:
        raise BundleError(f"{weights} is not a safetensors file; bundles hold weights only as safetensors") from None
    a = b.architecture
    dim = {"tiny224": 192, "small224": 384, "base224": 768, "base384": 768}[a["model_size"]]
    from monitor.model.ast import patch_grid

    f, t = patch_grid(a["fstride"], a["tstride"], a["input_fdim"], a["input_tdim"])
    checks = {"v.pos_embed": [1, f * t + 2, dim], "mlp_head.1.weight": [a["label_dim"], dim],
              "v.patch_embed.proj.weight": [dim, 1, 16, 16]}
    for k, shape in checks.items():
        got = header.get(k, {}).get("shape")
        if got != shape:
            raise BundleError(f"{weights.parent}: tensor {k} has shape {got}, the architecture needs {shape}")
    blocks = {int(k.split(".")[2]) for k in header if k.startswith("v.blocks.")}
    if blocks != set(range(a["depth"])):
        raise BundleError(f"{weights.parent}: weights have {len(blocks)} blocks, the architecture says {a['depth']}")


def save_bundle(out_dir: str | Path, model, *, name: str, version: str, labels: list[str], task: str,
                preprocessing: Preprocess, thresholds: Mapping[str, float], provenance: Mapping[str, Any] | None = None,
                fp16: bool = False) -> Bundle:
    """Write ``bundle.json`` + ``model.safetensors`` (via a temp folder, then rename); returns the loaded bundle."""
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    arch = {k: model.config[k] for k in ARCH_KEYS}
    if arch["label_dim"] != len(labels):
        raise BundleError(f"model has {arch['label_dim']} outputs but {len(labels)} labels were given")
    pre = preprocessing
    if pre.fbank.target_frames != arch["input_tdim"] or pre.fbank.num_mel_bins != arch["input_fdim"]:
        raise BundleError("preprocessing fbank target_frames/num_mel_bins must match the model's input_tdim/input_fdim")
    dtype = torch.float16 if fp16 else torch.float32
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    b = Bundle(name, version, list(labels), task, arch, pre, {k: float(thresholds[k]) for k in labels},
               dict(provenance or {}), weights_dtype="float16" if fp16 else "float32")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(sd, str(tmp / WEIGHTS))
        (tmp / "bundle.json").write_text(json.dumps(b.to_json(), indent=2) + "\n", encoding="utf-8")
        extra = [p for p in out_dir.iterdir()] if out_dir.is_dir() else []
        for p in extra:  # keep files written beside the bundle (model card, curves)
            if p.name not in ("bundle.json", WEIGHTS):
                shutil.move(str(p), tmp / p.name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_bundle(out_dir)


def list_models() -> list[dict[str, Any]]:
    """Bundles found on the search path, and pretrained checkpoints in the cache."""
    from monitor.model.checkpoints import PRETRAINED, cache_dir

    rows, seen = [], set()
    for base in bundle_search_path():
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if (d / "bundle.json").is_file() and d.name not in seen:
                seen.add(d.name)
                try:
                    b = load_bundle(d)
                    rows.append({"name": d.name, "kind": "bundle", "version": b.version, "labels": ", ".join(b.labels),
                                 "path": str(d), "default": d.name == DEFAULT_MODEL})
                except BundleError as exc:
                    rows.append({"name": d.name, "kind": "bundle (invalid)", "version": "", "labels": str(exc),
                                 "path": str(d), "default": False})
    for key, spec in PRETRAINED.items():
        p = cache_dir() / "checkpoints" / spec.filename
        rows.append({"name": key, "kind": "checkpoint", "version": "", "labels": f"{spec.label_dim} AudioSet classes",
                     "path": str(p) if p.is_file() else "(not downloaded: monitor models pull " + key + ")",
                     "default": False})
    return rows
