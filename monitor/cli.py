"""The ``monitor`` command line: parse, configure logging once, call the API.

Nothing heavy is imported at module level so ``monitor --help`` is instant; each command imports
what it needs when it runs. Whole-run failures (``MonitorError``) become one line on stderr and
exit status 2; everything else about a single file is the pipeline's business, not the CLI's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from monitor import __version__

log = logging.getLogger(__name__)


def _threshold(text: str) -> tuple[str, float]:
    label, sep, value = text.rpartition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"expected LABEL=X, got {text!r}")
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold for {label!r} must be a number, got {value!r}") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold for {label!r} must be in 0..1, got {x}")
    return label, x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="monitor",
        description="Find when each species was heard in a folder of field recordings.",
    )
    p.add_argument("--version", action="version", version=f"monitor {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="detect species in an SD-card folder and write reports")
    r.add_argument("input_dir", type=Path, help="folder of recordings (read-only; searched recursively)")
    r.add_argument("--out", type=Path, required=True, help="output folder (must not be inside INPUT_DIR)")
    r.add_argument("--model", action="append", default=None, metavar="NAME_OR_PATH",
                   help="model bundle; repeat to average an ensemble (default: the bundled demo model)")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--workers", type=int, default=None,
                   help="decoding/front-end worker processes (default: with a GPU up to 4; on a CPU, whose cores the "
                        "model already uses, 1 from 4 cores up, else 0 = in process)")
    r.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="auto: fp32 on a CPU; on a GPU bf16 from compute capability 8.0, else fp16. "
                        "fp32 (exact), int8 (CPU)")
    r.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="LABEL=X",
                   help="override a label's detection threshold")
    r.add_argument("--no-resume", action="store_true", help="start over instead of skipping finished files")

    m = sub.add_parser("metadata", help="print recorder metadata of files or folders")
    m.add_argument("paths", nargs="+", type=Path)
    m.add_argument("--json", action="store_true", help="one JSON object per file")

    t = sub.add_parser("train", help="train or fine-tune a model; exports a bundle")
    t.add_argument("config", type=Path, help="YAML recipe (only what differs from defaults)")
    t.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--folds", type=int, default=None, help="grouped K-fold cross-validation")
    t.add_argument("--plan", action="store_true",
                   help="write plan.csv (every window's group, split and per-label target) and print counts; no training")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set optim.epochs=2")

    rp = sub.add_parser("report", help="rebuild reports from OUT_DIR's results store (no model run)")
    rp.add_argument("out_dir", type=Path)
    rp.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="LABEL=X")

    md = sub.add_parser("models", help="list, inspect, pull or import models")
    msub = md.add_subparsers(dest="models_command", metavar="ACTION")
    msub.add_parser("list", help="bundled and cached models")
    mi = msub.add_parser("info", help="describe one model bundle")
    mi.add_argument("name")
    mp = msub.add_parser("pull", help="download a published pretrained checkpoint into the cache")
    mp.add_argument("name", help="e.g. audioset-10-10")
    mp.add_argument("--url", default=None, help="override the download URL (mirrors, file:// for tests)")
    mim = msub.add_parser("import", help="turn an official AST or Hugging Face checkpoint into a bundle")
    mim.add_argument("checkpoint", type=Path)
    mim.add_argument("--labels", type=Path, required=True,
                     help="labels file: CSV with a display_name/label column, or one label per line")
    mim.add_argument("--out", type=Path, required=True)
    mim.add_argument("--name", default=None)
    mim.add_argument("--version", dest="bundle_version", default="1.0.0")
    mim.add_argument("--format", default="auto", choices=["auto", "official", "hf"])
    mim.add_argument("--model-size", default="base384")
    mim.add_argument("--fstride", type=int, default=10)
    mim.add_argument("--tstride", type=int, default=10)
    mim.add_argument("--input-tdim", type=int, default=1024)
    mim.add_argument("--task", default="multilabel", choices=["multilabel", "multiclass"])
    mim.add_argument("--threshold", type=float, default=0.5)
    mim.add_argument("--low-hz", type=float, default=None)
    mim.add_argument("--high-hz", type=float, default=None)
    mim.add_argument("--norm-mean", type=float, default=None)
    mim.add_argument("--norm-std", type=float, default=None)
    return p


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "run":
        from monitor.pipeline import run_cli

        return run_cli(args)
    if args.command == "metadata":
        from monitor.metadata.cli import metadata_command

        return metadata_command(args.paths, as_json=args.json)
    if args.command == "train":
        from monitor.train.cli import train_command

        return train_command(args)
    if args.command == "report":
        from monitor.report import report_command

        return report_command(args.out_dir, dict(args.threshold))
    if args.command == "models":
        from monitor.model.cli import models_command

        if not args.models_command:
            parser.parse_args(["models", "--help"])
        return models_command(args)
    parser.print_help()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from monitor.logs import setup_logging

    setup_logging(args.verbose)
    from monitor.errors import MonitorError

    try:
        return int(_dispatch(args, parser) or 0)
    except MonitorError as exc:
        print(f"monitor: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("monitor: interrupted; finished files are saved: run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
