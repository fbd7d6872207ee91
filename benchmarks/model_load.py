"""Time to load a model bundle as `monitor run` does (``load_bundle`` + ``Bundle.build_model``), for the
AudioSet-size model (base384, 527 labels, the bundle `monitor models pull audioset-10-10` makes) and the tiny
demo size.

Baseline ``init+copy``: build the AST with its random initialisation, then copy the weights in (what
``build_model`` did before). Current ``meta+assign``: ``Bundle.build_model`` itself (built on the meta device,
the weights assigned). Each in a fresh process (imports included, as in a run), best of ``--repeat``.

    python benchmarks/model_load.py [--repeat 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[3]))
from monitor.model.bundle import load_bundle
import monitor.model.ast, timm.models.deit, safetensors.torch  # imports counted apart from the build
t1 = time.perf_counter()
b = load_bundle(sys.argv[1])
t2 = time.perf_counter()
if sys.argv[2] == "init+copy":
    from safetensors.torch import load_file
    from monitor.model.ast import AST
    model = AST.from_geometry(b.architecture)
    model.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(b.path / b.weights_file)).items()})
    model.eval()
else:
    model = b.build_model()
t3 = time.perf_counter()
with torch.no_grad():
    y = model(torch.zeros(1, b.architecture.input_tdim, b.architecture.input_fdim))
assert torch.isfinite(y).all()
print(json.dumps({"import_s": t1 - t0, "load_bundle_s": t2 - t1, "build_s": t3 - t2}))
"""


def make_bundle(folder: Path, size: str, labels: int, depth: int | None) -> Path:
    import torch

    from monitor.model import audioset
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle

    torch.manual_seed(0)
    m = AST(labels, 10, 10, 128, 1024, size, depth=depth)
    names = audioset.labels()[:labels]
    return save_bundle(folder, m, name=f"bench-{size}", version="0", labels=names, task="multilabel",
                       preprocessing=audioset.preprocessing(), thresholds={k: 0.3 for k in names}).path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny224 only")
    a = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}; torch threads {a.threads}; python {platform.python_version()}")
    cases = [("tiny224", 2, 4)] + ([] if a.quick else [("base384", 527, None)])
    print(f"{'model':<10} {'method':<12} {'import s':>9} {'load_bundle s':>14} {'build s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for size, labels, depth in cases:
            folder = make_bundle(Path(tmp) / size, size, labels, depth)
            res = {}
            for method in ("init+copy", "meta+assign"):
                runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, str(folder), method, str(a.threads)],
                                                  check=True, capture_output=True, text=True).stdout)
                        for _ in range(a.repeat)]
                best = {k: min(r[k] for r in runs) for k in runs[0]}
                res[method] = best
                print(f"{size:<10} {method:<12} {best['import_s']:>9.2f} {best['load_bundle_s']:>14.2f} "
                      f"{best['build_s']:>8.2f}")
            print(f"{size:<10} build speed-up meta+assign vs init+copy: "
                  f"{res['init+copy']['build_s'] / res['meta+assign']['build_s']:.1f}x")


if __name__ == "__main__":
    main()
