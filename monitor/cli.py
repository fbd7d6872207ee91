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
from monitor.config import (AUDIOSET_MEAN, AUDIOSET_STD, DEFAULT_THRESHOLD, PROGRESS_EVERY_S, STALL_STOP_S,
                            STALL_WARN_S)

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


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _input(text: str) -> Path | str:
    """A local folder (``Path``, which must exist: said at once, before anything heavy is imported) or an fsspec
    URL (kept as a string, checked when the run opens it)."""
    if "://" in text:
        return text
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"input folder not found: {text}")
    return Path(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="monitor",
        description="Find when each species was heard in a folder of field recordings.",
    )
    p.add_argument("--version", action="version", version=f"monitor {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="detect species in an SD-card folder and write reports")
    r.add_argument("input_dir", type=_input, help="folder of recordings (read-only; searched recursively), or an "
                   "fsspec URL (s3://bucket/folder, gs://..., file://...; pip install 'monitor[remote]')")
    r.add_argument("--out", type=Path, required=True, help="output folder (must not be inside INPUT_DIR)")
    r.add_argument("--model", action="append", default=None, metavar="NAME_OR_PATH",
                   help="model bundle; repeat to average an ensemble (default: the bundled demo model)")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    r.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="segments per model call: a number, or auto (16 on a CPU; on a GPU from its free memory, "
                        "halved if it runs out)")
    r.add_argument("--workers", type=int, default=None,
                   help="decoding/front-end worker processes (default: with a GPU every core but one; on a CPU, whose "
                        "cores the model already uses, 1 from 4 cores up, else 0 = in process)")
    r.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="auto: fp32 on a CPU; on a GPU bf16 from compute capability 8.0, else fp16. "
                        "fp32 (exact), int8 (CPU)")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile the model (GPU runs: slower start, maybe faster scoring; fp32/bf16/fp16)")
    r.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="LABEL=X",
                   help="set a label's detection threshold (all=X sets every label); kept for later runs and "
                        "rebuilds into OUT_DIR until new ones are given")
    r.add_argument("--labels", default=None, metavar="L1,L2",
                   help="keep only these labels in every output (exact names, any case; 'all' for every label); "
                        "kept like thresholds")
    r.add_argument("--deployments", type=Path, default=None, metavar="CSV",
                   help="deployments table: deployment, device_id/folder, time_zone, latitude, longitude, start, "
                        "end (see README); kept for later runs and rebuilds")
    r.add_argument("--no-resume", action="store_true",
                   help="re-score this card's files instead of skipping finished ones (other cards' results and "
                        "reviews are kept)")
    r.add_argument("--deployment", default=None, metavar="NAME",
                   help="name this card's deployment (default: each file's recorder ID, else its top folder)")
    r.add_argument("--prune", action="store_true",
                   help="archive the results of files no longer on this card (listed; `monitor report OUT "
                        "--restore-pruned` brings them back), and replace changed files' results")
    r.add_argument("--move", action="store_true",
                   help="with --deployment (or a deployments table): re-file files of this card already stored under "
                        "another deployment, with their verdicts, instead of refusing")
    r.add_argument("--screen", default=None, metavar="STUDENT",
                   help="a student distilled from --model (monitor distill): it scores every segment, the model only "
                        "those it passes; detections come only from the model (README 'Screening')")
    r.add_argument("--embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="also keep each segment's embedding (float16, in the results store) for `monitor search`, "
                        "heads trained from them and `monitor report --rescore`; kept for later runs into OUT_DIR")
    r.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this machine; ray: decode in Ray tasks, score in Ray actors (pip install "
                        "'monitor[ray]'; see README 'Past one machine')")
    r.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="--engine ray: join this Ray cluster (default: start Ray on this machine)")
    r.add_argument("--actors", type=int, default=None,
                   help="--engine ray: scoring actors (default: one per GPU, else one per node)")
    r.add_argument("--gpus-per-actor", type=float, default=None,
                   help="--engine ray: GPUs each scoring actor holds (default 1 when the cluster has GPUs)")
    r.add_argument("--stall-warn", type=float, default=None, metavar="SECONDS",
                   help=f"--engine ray: when no batch finished for this long, say what the run waits for (pending "
                        f"resources, nodes alive, work left) (default {STALL_WARN_S:g})")
    r.add_argument("--stall-stop", type=float, default=None, metavar="SECONDS",
                   help=f"--engine ray: when no batch finished for this long, stop; finished files are saved and a "
                        f"re-run resumes (default {STALL_STOP_S:g}; 0: never)")
    r.add_argument("--progress-every", type=float, default=PROGRESS_EVERY_S, metavar="SECONDS",
                   help=f"without a terminal (batch jobs): a progress line on stderr and in monitor.log this often, "
                        f"and at each 10%% (default {PROGRESS_EVERY_S:g}; 0: none)")

    m = sub.add_parser("metadata", help="print recorder metadata of files or folders")
    m.add_argument("paths", nargs="+", type=Path)
    m.add_argument("--json", action="store_true", help="one JSON object per file")

    t = sub.add_parser("train", help="train or fine-tune a model; exports a bundle")
    t.add_argument("config", help="a recipe: a YAML file (only what differs from defaults) or the name of a packaged "
                                   "recipe (see `monitor recipes list`)")
    t.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<recipe name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--folds", type=int, default=None, help="grouped K-fold cross-validation")
    t.add_argument("--plan", action="store_true",
                   help="write plan.csv (every window's group, split and per-label target) and print counts; no training")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML syntax), e.g. --set optim.epochs=2")

    ds = sub.add_parser("distill", help="train a small student that screens segments for a model "
                        "(monitor run --screen)")
    ds.add_argument("teacher", nargs="+", help="the model to screen for, as given to monitor run --model (bundle name "
                    "or folder, a run folder, an ensemble bundle; several: their ensemble)")
    ds.add_argument("--audio", type=Path, nargs="+", required=True, metavar="DIR",
                    help="folders of your own recordings (unlabelled: the teacher labels them)")
    ds.add_argument("--out", type=Path, required=True, metavar="RUN",
                    help="run folder: teacher scores (cached, resumable), the student bundle in RUN/bundle")
    ds.add_argument("--reviews", type=Path, nargs="+", default=None, metavar="OUT_DIR",
                    help="run folders whose reviewers' yes / no replace the teacher's score for their label")
    ds.add_argument("--recall", type=float, default=0.99,
                    help="fraction of the teacher's positive segments the screen must keep on held-out recordings")
    ds.add_argument("--held-out", type=float, default=0.25, help="fraction of recordings held out (never trained on)")
    ds.add_argument("--student-size", default="tiny224", choices=["tiny224", "small224", "base224", "base384"])
    ds.add_argument("--depth", type=int, default=2, help="the student's transformer blocks")
    ds.add_argument("--stride", type=int, default=16, help="the student's patch stride (16: no overlap, fastest)")
    ds.add_argument("--init", default="auto", choices=["auto", "teacher", "scratch"],
                    help="auto: the teacher's first blocks when it has the student's size and stride, else scratch")
    ds.add_argument("--epochs", type=int, default=30)
    ds.add_argument("--patience", type=int, default=6,
                    help="stop after this many epochs without a better held-out loss")
    ds.add_argument("--batch-size", type=int, default=16)
    ds.add_argument("--lr", type=float, default=5e-4)
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--name", default=None, help="the student bundle's name (default: TEACHER-screen)")
    ds.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ds.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                    help="the teacher's precision while it scores your audio (use the one monitor run will use)")
    ds.add_argument("--restart", action="store_true",
                    help="train the student again from the start (teacher scores stay cached)")

    rp = sub.add_parser("report", help="rebuild reports from OUT_DIR's results store (no model run)")
    rp.add_argument("out_dir", type=Path)
    rp.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="LABEL=X",
                    help="set a label's threshold (all=X: every label); kept for later runs until new ones are given")
    rp.add_argument("--labels", default=None, metavar="L1,L2",
                    help="keep only these labels in every output ('all' for every label)")
    rp.add_argument("--deployments", type=Path, default=None, metavar="CSV",
                    help="a new deployments table: time zones and places (deployment names stay as assigned)")
    rp.add_argument("--restore-pruned", action="store_true",
                    help="bring back results that --prune archived (where nothing newer took their place)")
    rp.add_argument("--rescore", default=None, metavar="BUNDLE",
                    help="apply BUNDLE's head to the stored embeddings of every card (needs runs with --embeddings "
                         "and a bundle with the same backbone, e.g. one trained with data.source: embeddings); the "
                         "folder then holds BUNDLE's results; every verdict is kept")

    se = sub.add_parser("search", help="find segments like an example, or pick segments to review next")
    se.add_argument("out_dir", type=Path, help="an output folder of runs with --embeddings")
    se.add_argument("--example", action="append", default=[], metavar="AUDIO[@START_S]",
                    help="an audio file (its window from START_S, default 0); repeat to search by several")
    se.add_argument("--top", type=int, default=100, help="rows to list (default 100)")
    se.add_argument("--label", default=None, metavar="NAME",
                    help="the label the Verified column judges (a new species' name is fine)")
    se.add_argument("--name", default=None, help="file name of the list (default: the label or the example)")
    se.add_argument("--model", default=None, metavar="NAME_OR_PATH",
                    help="the bundle to embed examples with (default: the folder's model)")
    se.add_argument("--uncertain", default=None, metavar="LABEL",
                    help="instead of examples: the unreviewed segments nearest LABEL's threshold (margin sampling)")
    se.add_argument("--sample", default=None, metavar="LABEL",
                    help="instead of examples: a random sample of LABEL's scores stratified by score, to estimate "
                         "precision")
    se.add_argument("--seed", type=int, default=0, help="--sample: the random seed")

    rc = sub.add_parser("recipes", help="list, show or copy the packaged training recipes")
    rsub = rc.add_subparsers(dest="recipes_command", metavar="ACTION")
    rsub.add_parser("list", help="the packaged recipes, one line each")
    rs = rsub.add_parser("show", help="print a recipe")
    rs.add_argument("name")
    rcp = rsub.add_parser("copy", help="copy a recipe (and the files it references) to edit it")
    rcp.add_argument("name")
    rcp.add_argument("dest", type=Path, help="a folder, or a .yaml file name")
    rcp.add_argument("--force", action="store_true", help="replace existing files")

    ec = sub.add_parser("example-card", help="write the packaged example SD card into a folder")
    ec.add_argument("dir", type=Path, help="a new or empty folder")
    ec.add_argument("--force", action="store_true",
                    help="write into a non-empty folder (the card's files are replaced, other files kept)")

    md = sub.add_parser("models", help="list, inspect, pull or import models")
    msub = md.add_subparsers(dest="models_command", metavar="ACTION")
    msub.add_parser("list", help="bundled and cached models")
    mi = msub.add_parser("info", help="describe one model bundle (or published checkpoint)")
    mi.add_argument("name")
    mi.add_argument("--labels", "--all", dest="all_labels", action="store_true",
                    help="list every label with its threshold (long lists are otherwise summarised)")
    mp = msub.add_parser("pull", help="download a published AudioSet checkpoint and make its runnable bundle")
    mp.add_argument("name", help="e.g. audioset-10-10; then `monitor run ... --model audioset-10-10`")
    mp.add_argument("--url", default=None, help="override the download URL (mirrors, file:// for tests)")
    mim = msub.add_parser("import", help="turn an official AST or Hugging Face checkpoint into a bundle")
    mim.add_argument("checkpoint", type=Path)
    mim.add_argument("--labels", type=Path, default=None,
                     help="labels file: CSV with a display_name/label column, or one label per line "
                          "(default for a 527-output AudioSet checkpoint: the AudioSet labels shipped with monitor)")
    mim.add_argument("--out", type=Path, required=True)
    mim.add_argument("--name", default=None)
    mim.add_argument("--version", dest="bundle_version", default="1.0.0")
    mim.add_argument("--format", default="auto", choices=["auto", "official", "hf"])
    mim.add_argument("--model-size", default="base384")
    mim.add_argument("--fstride", type=int, default=10)
    mim.add_argument("--tstride", type=int, default=10)
    mim.add_argument("--input-tdim", type=int, default=1024)
    mim.add_argument("--task", default="multilabel", choices=["multilabel", "multiclass"])
    mim.add_argument("--threshold", type=float, default=None,
                     help="one threshold for every label (default: 0.3 for the AudioSet labels, "
                          f"else {DEFAULT_THRESHOLD:g})")
    mim.add_argument("--low-hz", type=float, default=None)
    mim.add_argument("--high-hz", type=float, default=None)
    mim.add_argument("--norm-mean", type=float, default=None, help=f"fbank mean (default: AudioSet's {AUDIOSET_MEAN})")
    mim.add_argument("--norm-std", type=float, default=None, help=f"fbank std (default: AudioSet's {AUDIOSET_STD})")
    return p


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def run_command(args: argparse.Namespace) -> int:
    """``monitor run``: one-line errors (also in OUT's monitor.log when OUT exists), summary on stdout."""
    from monitor.config import RunConfig
    from monitor.errors import MonitorError
    from monitor.logs import add_log_file
    from monitor.outdir import LOG_NAME, is_out
    from monitor.pipeline import run

    dst = Path(args.out).expanduser().resolve()
    if is_out(dst):  # errors and this command go into its log; a new OUT is only made once the run can start
        add_log_file(dst / LOG_NAME)
    command = " ".join(["monitor", *map(_quote, sys.argv[1:])])
    log.info("monitor %s: %s", __version__, command)
    try:
        cfg = RunConfig(args.input_dir, args.out, models=args.model, device=args.device, batch_size=args.batch_size,
                        workers=args.workers, precision=args.precision, compile=args.compile,
                        thresholds=dict(args.threshold), labels=None if args.labels is None else [args.labels],
                        deployment=args.deployment, deployments=args.deployments, resume=not args.no_resume,
                        prune=args.prune, move=args.move, engine=args.engine, address=args.address,
                        actors=args.actors, gpus_per_actor=args.gpus_per_actor, stall_warn_s=args.stall_warn,
                        stall_stop_s=args.stall_stop, progress_every_s=args.progress_every, command=command,
                        embeddings=args.embeddings, screen=args.screen)
        info = run(cfg)
    except MonitorError:
        if is_out(dst):  # the run got as far as making OUT: its log says why it stopped
            add_log_file(dst / LOG_NAME)
        raise
    except Exception as exc:  # unexpected: full detail to the log file, one line to the user
        if is_out(dst):
            add_log_file(dst / LOG_NAME)
        log.debug("run failed", exc_info=True)
        raise MonitorError(f"unexpected error: {exc} (details in {dst / LOG_NAME})") from None
    for line in info.summary_lines():
        print(f"monitor: {line}")
    side = "" if info.workbook == "report.xlsx" else " (report.xlsx is open or unreadable: it was left as it was)"
    print(f"monitor: reports in {dst} ({info.workbook}{side}, detections.csv, recordings.csv)")
    return 0


def report_command(args: argparse.Namespace) -> int:
    """``monitor report OUT_DIR``: rebuild every report from the results store with (new) thresholds."""
    from monitor.logs import add_log_file
    from monitor.outdir import LOG_NAME, is_out, rebuild_reports

    out_dir = Path(args.out_dir)
    if is_out(out_dir):
        add_log_file(out_dir / LOG_NAME)
    if args.rescore:
        from monitor.agile.rescore import rescore
        from monitor.errors import MonitorError

        if args.restore_pruned or args.deployments:
            raise MonitorError("--rescore takes --threshold and --labels; run --restore-pruned or --deployments "
                               "in a `monitor report` of its own")
        info = rescore(out_dir, args.rescore, dict(args.threshold), None if args.labels is None else [args.labels],
                       command=" ".join(["monitor", *map(_quote, sys.argv[1:])]))
        print(f"monitor: rescored with {info.model.name} {info.model.version}; reports rebuilt in {out_dir} "
              f"({info.workbook}): {info.counts.get('detections', '?')} detections")
        for line in info.summary_lines()[1:]:
            print(f"monitor: {line}")
        return 0
    info = rebuild_reports(out_dir, dict(args.threshold), args.deployments,
                           None if args.labels is None else [args.labels], restore_pruned=args.restore_pruned)
    thr = info.thresholds
    shown = ", ".join(f"{k}={v:g}" for k, v in list(thr.items())[:12]) + (" ..." if len(thr) > 12 else "")
    print(f"monitor: reports rebuilt in {out_dir} ({info.workbook}): {info.counts.get('detections', '?')} detections"
          + (f" (thresholds {shown})" if thr else ""))
    for line in info.summary_lines()[1:]:
        print(f"monitor: {line}")
    return 0


def search_command(args: argparse.Namespace) -> int:
    """``monitor search OUT``: by example, or what to review next; prints the paths written."""
    from monitor.agile import search as agile
    from monitor.errors import MonitorError
    from monitor.logs import add_log_file
    from monitor.outdir import LOG_NAME, is_out

    if is_out(args.out_dir):
        add_log_file(Path(args.out_dir) / LOG_NAME)
    modes = [bool(args.example), args.uncertain is not None, args.sample is not None]
    if sum(modes) != 1:
        raise MonitorError("give --example AUDIO (repeatable), or --uncertain LABEL, or --sample LABEL")
    if args.top < 1:
        raise MonitorError("--top must be >= 1")
    if args.example:
        res = agile.search(args.out_dir, args.example, args.top, args.label, args.name, args.model)
        print(f"monitor: {res.rows} most similar of {res.searched} segments (searched in {res.seconds:.2f} s)")
    elif args.uncertain is not None:
        res = agile.uncertain(args.out_dir, args.uncertain, args.top, args.name)
        print(f"monitor: {res.rows} unreviewed segments nearest the threshold, of {res.searched}")
    else:
        res = agile.sample(args.out_dir, args.sample, args.top, args.name, args.seed)
        print(f"monitor: a stratified sample of {res.rows} of {res.searched} segments")
    print(f"monitor: {res.csv}")
    print(f"monitor: {res.xlsx} (fill Verified: `monitor report` reads it into the results store)")
    return 0


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "run":
        return run_command(args)
    if args.command == "metadata":
        from monitor.metadata.cli import metadata_command

        return metadata_command(args.paths, as_json=args.json)
    if args.command == "train":
        from monitor.train.cli import train_command

        return train_command(args)
    if args.command == "report":
        return report_command(args)
    if args.command == "distill":
        from monitor.train.distill import distill_command

        return distill_command(args)
    if args.command == "search":
        return search_command(args)
    if args.command == "recipes":
        from monitor.train.recipes import recipes_command

        return recipes_command(args)
    if args.command == "example-card":
        from monitor.resources import example_card_command

        return example_card_command(args)
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
        from monitor.logs import error

        error(str(exc))
        return 2
    except KeyboardInterrupt:
        print("monitor: interrupted; finished files are saved: run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
