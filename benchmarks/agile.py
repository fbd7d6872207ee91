"""The agile loop's costs and quality, on this machine's CPU (named in the output).

    python benchmarks/agile.py                         # every part
    python benchmarks/agile.py --only search,head      # some: overhead, store, search, indexes, head, rescore, quality
    python benchmarks/agile.py --index-path /tmp/vec   # where usearch / faiss-cpu / hnswlib are installed (optional)

- overhead: the scorer with and without embeddings on one batch, alternated (robust to a busy machine), then
  ``monitor run`` with and without ``--embeddings`` on real recordings, both with the production geometry
  (base384, random weights), alternated, best of ``--repeats``; target: at most 5 % slower.
- store: 1 M x 768 float16 embeddings written through ``put_file`` (360 segments per file, one hour), then read
  back (``load_embeddings``) as ``monitor search`` does.
- search: p50 of one query (one and three examples) over those 1 M x 768 (brute force, ``agile.index``); target
  at most 1 s on 2 cores.
- indexes: the same queries through usearch (as perch-hoplite), faiss and hnswlib when importable: build time
  and p50 at ``--index-n`` vectors (build times grow about linearly with n).
- head: ``monitor train`` (``data.source: embeddings``) on a 72 h card: 26,000 stored 768-d embeddings, 500 of
  them reviewed, the rest weak negatives; target: at most 10 s (fit), export of a base384 bundle beside it.
- rescore: ``monitor report --rescore`` of 1 M stored segments (head applied and scores written; the reports'
  rebuild timed apart); target: at most 60 s.
- quality: frog / bird on ``../shared/data/clips``: held-out AUC of a head trained on 5, 10 and 20 examples per
  label beside a full fine-tune on the same examples, both from the demo model's backbone, new head rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MONITOR_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO / "benchmarks"))

from inference import cpu_name, gather_audio  # noqa: E402

PER_FILE = 360  # segments in an hour-long recording


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def base_bundle(folder: Path, labels=("a", "b"), threshold: float = 0.5) -> Path:
    import torch

    from monitor.config import Preprocess
    from monitor.model.ast import AST
    from monitor.model.bundle import save_bundle

    torch.manual_seed(0)
    m = AST(label_dim=len(labels), model_size="base384", fstride=10, tstride=10)
    save_bundle(folder, m, name="base-random", version="0", labels=list(labels), task="multilabel",
                preprocessing=Preprocess(), thresholds={x: threshold for x in labels})
    return folder


# --- overhead -----------------------------------------------------------------------------------------------

def overhead(work: Path, repeats: int, minutes: float) -> str:
    from monitor.config import RunConfig
    from monitor.pipeline import run

    bundle = base_bundle(work / "base384")
    card = work / "card"
    card.mkdir()
    audio = gather_audio(card, minutes)
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for k in range(repeats):
        for emb in (False, True) if k % 2 == 0 else (True, False):
            out = work / f"out-{emb}-{k}"
            t0, c0 = time.perf_counter(), time.process_time()
            info = run(RunConfig(card, out, models=[str(bundle)], workers=0, progress=False, embeddings=emb))
            times[emb].append(time.perf_counter() - t0)
            cpu[emb].append(time.process_time() - c0)
            print(f"  run {'--embeddings' if emb else 'plain      '}: {times[emb][-1]:.1f} s wall, {cpu[emb][-1]:.1f} s "
                  f"CPU ({info.counts['segments']} segments)", flush=True)
            shutil.rmtree(out)
    a, b = statistics.median(cpu[False]), statistics.median(cpu[True])
    pct = 100 * (b - a) / a
    return (f"embedding overhead (monitor run, in process, --workers 0, {audio / 60:.1f} min of audio, base384, "
            f"{repeats} alternated): CPU time (median) plain {a:.1f} s, --embeddings {b:.1f} s: {pct:+.1f} % -> "
            f"{verdict(pct <= 5)} (target <= 5 %); wall (best) {min(times[False]):.1f} s vs {min(times[True]):.1f} s")


def scorer_overhead(repeats: int, batch: int = 4) -> str:
    """The same model, the same batch, scored with and without embeddings, alternated (robust to other load)."""
    from monitor.infer import Scorer, prepare_models
    from monitor.model.bundle import load_bundle
    from monitor.plan import Rows

    with tempfile.TemporaryDirectory() as tmp:
        b = load_bundle(base_bundle(Path(tmp) / "b"))
        (model,), prec = prepare_models([b], "cpu", "fp32")
    plain = Scorer([b], [model], "cpu", prec, batch)
    emb = Scorer([b], [model], "cpu", prec, batch, embeddings=True)
    x = np.random.default_rng(0).standard_normal((batch, 1024, 128)).astype(np.float32)
    rows = Rows(0, x, np.zeros(batch, np.int64), ("",) * batch)
    times: dict[str, list[float]] = {"plain": [], "embeddings": []}
    cpu: dict[str, list[float]] = {"plain": [], "embeddings": []}
    for k in range(repeats):
        for name, s in (("plain", plain), ("embeddings", emb)) if k % 2 == 0 else (("embeddings", emb), ("plain", plain)):
            t0, c0 = time.perf_counter(), time.process_time()
            p = s.submit(rows)
            s.collect(p)
            s.collect_embeddings(p)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    a, e = statistics.median(cpu["plain"]), statistics.median(cpu["embeddings"])
    pct = 100 * (e - a) / a
    wa, we = min(times["plain"]), min(times["embeddings"])
    return (f"embedding overhead (scorer, base384, batch {batch}, {repeats} alternated): CPU time per batch (median) "
            f"plain {a:.2f} s, with embeddings {e:.2f} s: {pct:+.1f} % -> {verdict(pct <= 5)} (target <= 5 %); "
            f"wall (best) {wa:.2f} s vs {we:.2f} s")


# --- a synthetic season in a results store -----------------------------------------------------------------

def fill_store(out: Path, n: int, width: int, bundle, labels: list[str], seed: int = 0, signal: int = 0):
    """A results store with ``n`` segments in hour-long files, their float16 embeddings (random; ``signal``
    segments per label shifted along one direction each) and the run info naming ``bundle``."""
    from monitor.results import ModelRef, RunInfo
    from monitor.store import FileKey, ResultsStore

    out.mkdir(parents=True, exist_ok=True)
    st = ResultsStore(out / "monitor.sqlite")
    st.bind_model(bundle.sha256, labels, bundle.name)
    st.set_meta("bundle_thresholds", dict(bundle.thresholds))
    st.set_meta("embeddings", True)
    ref = ModelRef(bundle.name, bundle.version, bundle.sha256, str(bundle.path))
    st.set_meta("run_info", RunInfo(model=ref, models=[ref], labels=labels, thresholds=dict(bundle.thresholds),
                                    batch_size=16).to_json())
    card = st.new_card("synthetic", str(out / "card"))
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((len(labels), width)).astype(np.float32)
    truth = np.full(n, -1)
    for j in range(len(labels) if signal else 0):  # each label present in 5 % of the segments, as a call is
        truth[rng.choice(n, size=n // 20, replace=False)] = j
    t0 = time.perf_counter()
    zeros = np.zeros(len(labels), np.float32)
    for f, a in enumerate(range(0, n, PER_FILE)):
        k = min(PER_FILE, n - a)
        v = rng.standard_normal((k, width), dtype=np.float32)
        lab = truth[a:a + k]
        v[lab >= 0] += 0.05 * dirs[lab[lab >= 0]]  # along its direction: 1.4 noise sds (Bayes AUC about 0.84)
        segs = [(i, 10.0 * i, 10.0 * i + 10, zeros) for i in range(k)]
        st.put_file(FileKey("site", f"f{f:05d}.wav", 1, 1, bundle.sha256), "ok", "", {"start_time": ""}, segs,
                    card=card, embeddings=v.astype(np.float16), backbone=bundle.backbone(), bundle=bundle.sha256)
    write_s = time.perf_counter() - t0
    return st, truth, write_s


def store_and_search(work: Path, n: int, queries: int) -> tuple[list[str], np.ndarray]:
    import torch

    from monitor.agile.index import SegmentIndex
    from monitor.model.bundle import load_bundle

    bundle = load_bundle(base_bundle(work / "base384-s"))
    st, _, write_s = fill_store(work / "season", n, 768, bundle, list(bundle.labels))
    lines = [f"store: {n} x 768 float16 embeddings written in {write_s:.1f} s (one transaction per hour-long file)"]
    loads = []
    for _ in range(2):
        t0 = time.perf_counter()
        emb = st.load_embeddings()
        loads.append(time.perf_counter() - t0)
    lines.append(f"store: {len(emb)} embeddings read back in {min(loads):.1f} s (best of 2; "
                 f"{emb.vectors.nbytes / 2**30:.2f} GiB)")
    t0 = time.perf_counter()
    index = SegmentIndex(emb.vectors, emb.norms)
    build = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    res, cpu = {}, {}
    for k in (1, 3):
        ts, cs = [], []
        for _ in range(queries):
            q = emb.vectors[rng.integers(0, len(emb), size=k)].astype(np.float32)
            t0, c0 = time.perf_counter(), time.process_time()
            index.search(q, 100)
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        res[k], cpu[k] = statistics.median(ts), statistics.median(cs)
    lines.append(f"search: p50 {res[1]:.2f} s (1 example), {res[3]:.2f} s (3 examples) over {len(emb)} x 768, top 100, "
                 f"{queries} queries each, {torch.get_num_threads()} threads (CPU time p50 {cpu[1]:.2f} s / "
                 f"{cpu[3]:.2f} s over both cores; index set up in {build:.2f} s from the stored lengths) "
                 f"-> {verdict(max(res.values()) <= 1.0)} (target <= 1 s)")
    st.close()
    return lines, emb.vectors


def indexes(vectors: np.ndarray, n: int, queries: int) -> list[str]:
    """usearch / faiss / hnswlib beside brute force, on the first ``n`` vectors (float32 for faiss/hnswlib)."""
    from monitor.agile.index import SegmentIndex

    v16 = np.ascontiguousarray(vectors[:n])
    v32 = v16.astype(np.float32)
    v32 /= np.linalg.norm(v32, axis=1, keepdims=True)
    rng = np.random.default_rng(2)
    qs = [v32[rng.integers(0, n)] for _ in range(queries)]
    out = []

    def p50(fn):
        ts = []
        for q in qs:
            t0 = time.perf_counter()
            fn(q)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    t0 = time.perf_counter()
    idx = SegmentIndex(v16)
    out.append(f"indexes at {n}: brute force (float16) build {time.perf_counter() - t0:.1f} s, "
               f"p50 {p50(lambda q: idx.search(q[None], 100)):.3f} s")
    try:
        from usearch.index import Index

        t0 = time.perf_counter()
        u = Index(ndim=v16.shape[1], metric="cos", dtype="f16")
        u.add(np.arange(n), v16)
        out.append(f"indexes at {n}: usearch HNSW (f16) build {time.perf_counter() - t0:.1f} s, "
                   f"p50 {p50(lambda q: u.search(q, 100)):.4f} s")
    except ImportError:
        out.append("indexes: usearch not installed")
    try:
        import faiss

        t0 = time.perf_counter()
        fl = faiss.IndexFlatIP(v32.shape[1])
        fl.add(v32)
        out.append(f"indexes at {n}: faiss IndexFlatIP (exact, float32) build {time.perf_counter() - t0:.1f} s, "
                   f"p50 {p50(lambda q: fl.search(q[None], 100)):.3f} s")
        t0 = time.perf_counter()
        hn = faiss.IndexHNSWFlat(v32.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        hn.add(v32)
        out.append(f"indexes at {n}: faiss HNSW build {time.perf_counter() - t0:.1f} s, "
                   f"p50 {p50(lambda q: hn.search(q[None], 100)):.4f} s")
    except ImportError:
        out.append("indexes: faiss not installed")
    try:
        import hnswlib

        t0 = time.perf_counter()
        h = hnswlib.Index(space="cosine", dim=v32.shape[1])
        h.init_index(max_elements=n, ef_construction=100, M=16)
        h.add_items(v32, np.arange(n))
        h.set_ef(200)
        out.append(f"indexes at {n}: hnswlib build {time.perf_counter() - t0:.1f} s, "
                   f"p50 {p50(lambda q: h.knn_query(q, 100)):.4f} s")
    except ImportError:
        out.append("indexes: hnswlib not installed")
    return out


# --- a head on a 72 h card ---------------------------------------------------------------------------------

def head(work: Path, n: int = 26_000, reviewed: int = 500) -> str:
    from monitor.model.bundle import load_bundle
    from monitor.store import Review
    from monitor.train.config import load_config
    from monitor.train.headfit import train_head

    bundle = load_bundle(base_bundle(work / "base384-h"))
    out = work / "card72h"
    st, truth, _ = fill_store(out, n, 768, bundle, list(bundle.labels), seed=3, signal=1)
    rng = np.random.default_rng(4)
    # as the loop finds them: 100 calls per label from searches, the rest of the verdicts on random segments
    found = np.concatenate([rng.choice(np.flatnonzero(truth == j), size=100, replace=False) for j in range(2)])
    rows = np.concatenate([found, rng.choice(np.setdiff1d(np.arange(n), found), size=reviewed - len(found),
                                             replace=False)])
    new = ["species-a", "species-b"]
    reviews = []
    for r in rows:
        f, i = divmod(int(r), PER_FILE)
        for j, lab in enumerate(new):
            reviews.append(Review("site", f"f{f:05d}.wav", lab, 10.0 * i, 10.0 * i + 10,
                                  "yes" if truth[r] == j else "no"))
    st.put_reviews(reviews, source="benchmark")
    st.close()
    cfg = load_config(REPO / "configs" / "head_from_embeddings.yaml",
                      [f"data.out={out}", f"data.weak_negatives={n - reviewed}"])
    t0, c0 = time.perf_counter(), time.process_time()
    res = train_head(cfg, work / "head-run", name="bench-head", progress=False)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = res["metrics"] or {}
    return (f"head: trained on {n} stored 768-d embeddings ({reviewed} reviewed, {n - reviewed} weak negatives) "
            f"in {res['fit_seconds']:.1f} s (read, train {cfg.optim.epochs} epochs, validate; validation mAUC "
            f"{m.get('mAUC', float('nan')):.3f}); with calibration and the base384 bundle's export "
            f"{total:.1f} s ({cpu:.1f} s CPU) -> {verdict(res['fit_seconds'] <= 10)} (target <= 10 s)")


# --- rescoring a season ------------------------------------------------------------------------------------

def rescore_season(work: Path, n: int, labels: int) -> list[str]:
    import torch

    from monitor.agile.rescore import rescore
    from monitor.model.bundle import load_bundle
    from monitor.model.head import Head

    names = [f"l{j}" for j in range(labels)]
    # thresholds near 1: random weights score about 0.5 everywhere, and a season's reports hold few detections
    bundle = load_bundle(base_bundle(work / "base384-r", names, threshold=0.9999))
    st, _, _ = fill_store(work / "rescore", n, 768, bundle, names)
    runs_before = len(st.runs())
    st.close()
    t0 = time.perf_counter()
    rescore(work / "rescore", bundle.path)
    total = time.perf_counter() - t0
    from monitor.store import ResultsStore

    st = ResultsStore(work / "rescore" / "monitor.sqlite")
    info = st.runs()[runs_before]["info"]
    st.close()
    head = Head.from_tensors({k: torch.randn(v) for k, v in {"mlp_head.0.weight": (768,), "mlp_head.0.bias": (768,),
                                                               "mlp_head.1.weight": (527, 768),
                                                               "mlp_head.1.bias": (527,)}.items()}, 1e-5)
    x = torch.randn(1 << 16, 768).half()
    t1 = time.perf_counter()
    head.scores(x, "multilabel")
    per527 = (time.perf_counter() - t1) * n / len(x)
    return [f"rescore: {n} stored segments, {labels} labels: head applied and scores written in {info['seconds']:.1f} s "
            f"-> {verdict(info['seconds'] <= 60)} (target <= 60 s); with every report rebuilt {total:.1f} s",
            f"rescore: the head alone with 527 labels (AudioSet's) on {n} segments: {per527:.1f} s (compute only)"]


# --- quality on the labelled clips -------------------------------------------------------------------------

def quality(work: Path, sizes=(5, 10, 20), seeds=(0, 1, 2), epochs: int = 8) -> list[str]:
    import dataclasses

    import torch

    from monitor.agile.index import SegmentIndex  # noqa: F401 (the loop's own import path)
    from monitor.decode import decode_task
    from monitor.model.bundle import load_bundle
    from monitor.model.head import Head
    from monitor.plan import job_from_path, plan_batches
    from monitor.train.single import run_one
    from monitor.train.config import build_config, load_config
    from monitor.train.headfit import fit_linear
    from monitor.train.metrics import evaluate_scores
    from monitor.train.sources import from_folders
    from monitor.train.table import make_table, target_matrix

    src = load_bundle("demo-frog-bird")
    root = SHARED / "data" / "clips"
    val = {line.strip() for line in (REPO / "configs" / "demo_val.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")}
    table, _ = from_folders(root, src.preprocessing.segment)
    new = {"frog": "anura", "bird": "aves"}  # new names: neither path starts from the demo's trained head rows
    labels = ["anura", "aves"]
    table["labels"] = [tuple(new[x] for x in t) for t in table["labels"]]
    rel = [Path(f).relative_to(root).as_posix() for f in table["file"]]
    test = np.array([r in val for r in rel])
    # every window's float16 embedding, as `monitor run --embeddings` stores it
    jobs = [job_from_path(f, key=i) for i, f in enumerate(dict.fromkeys(table["file"]))]
    from monitor.infer import Scorer, prepare_models
    from monitor.plan import Rows

    models, prec = prepare_models([src], "cpu", "fp32")
    scorer = Scorer([src], models, "cpu", prec, 16, embeddings=True)
    plan = plan_batches(jobs, src.preprocessing, 16)
    emb_of = {}
    for t in plan.tasks:
        rows = decode_task(t, src.preprocessing, "features")
        e = scorer.collect_embeddings(scorer.submit(Rows(0, rows.data, rows.nonfinite, rows.errors)))
        k = 0
        for sp in t.spans:
            sr = sp.sample_rate_hz
            for (_, a, b) in sp.bounds:
                emb_of[(sp.path, round(a / sr, 3))] = e[k]
                k += 1
    vec = np.stack([emb_of[(f, round(a, 3))] for f, a in zip(table["file"], table["start_s"])])
    y = target_matrix(table, labels)
    hcfg = load_config(REPO / "configs" / "head_from_embeddings.yaml")
    base = Head.from_module(src.build_model().mlp_head)
    x = torch.nn.functional.layer_norm(torch.from_numpy(vec).float(), (base.width,), base.ln_weight.float(),
                                       base.ln_bias.float(), base.eps)
    te = np.flatnonzero(test)
    out = [f"quality: frog / bird windows of ../shared/data/clips: {len(table)} in all, {len(te)} held out (the demo "
           "model's validation recordings); backbone: demo-frog-bird's (trained on the other recordings), new head "
           f"rows for both; AUC on the held-out windows, mean of {len(seeds)} draws of the examples"]
    for n in sizes:
        aucs = {"head": [], "finetune": []}
        secs = {"head": [], "finetune": []}
        for seed in seeds:
            rng = np.random.default_rng(seed)
            tr = np.concatenate([rng.choice(np.flatnonzero(~test & np.array([lab in t for t in table["labels"]])),
                                            size=n, replace=False) for lab in labels])
            t0 = time.perf_counter()
            w, b, _, _ = fit_linear(x, y, np.ones(len(y)), torch.zeros(2, base.width), torch.zeros(2),
                                    hcfg, tr, lambda w, b: (float("nan"), {}))
            h = dataclasses.replace(base, weight=w.double(), bias=b.double())
            s = h.scores(torch.from_numpy(vec[te]), "multilabel").numpy()
            secs["head"].append(time.perf_counter() - t0)
            aucs["head"].append(evaluate_scores(y[te], s, labels)["summary"]["mAUC"])
            sub = make_table([dict(file=table["file"][i], start_s=table["start_s"][i], end_s=table["end_s"][i],
                                   labels=table["labels"][i], group=rel[i]) for i in np.r_[tr, te]])
            split = np.array(["train"] * len(tr) + ["test"] * len(te), dtype=object)
            cfg = build_config({
                "data": {"source": "folders", "cache_dir": str(work / "fbank")},
                "model": {"init": "bundle", "checkpoint": str(src.path), "size": "tiny224", "depth": 4, "fstride": 16,
                          "tstride": 16},
                "optim": {"lr": 1e-4, "epochs": epochs, "batch_size": 8, "scheduler": "constant", "seed": seed},
                "export": {"plots": False}})
            t0 = time.perf_counter()
            res = run_one(cfg, work / f"ft-{n}-{seed}", sub, labels, split, name="ft", progress=False)
            secs["finetune"].append(time.perf_counter() - t0)
            aucs["finetune"].append(res["test_metrics"]["mAUC"])
            shutil.rmtree(work / f"ft-{n}-{seed}", ignore_errors=True)
        out.append(f"quality: {n:2d} examples per label: head AUC {np.mean(aucs['head']):.3f} "
                   f"({np.mean(secs['head']):.2f} s), full fine-tune ({epochs} epochs) AUC "
                   f"{np.mean(aucs['finetune']):.3f} ({np.mean(secs['finetune']):.0f} s)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="overhead,store,search,indexes,head,rescore,quality")
    ap.add_argument("--n", type=int, default=1_000_000, help="stored segments for store/search/rescore")
    ap.add_argument("--index-n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=1.5, help="audio for the overhead runs")
    ap.add_argument("--labels", type=int, default=5, help="labels of the rescoring head")
    ap.add_argument("--index-path", default=None, help="a folder holding usearch / faiss / hnswlib (pip --target)")
    args = ap.parse_args()
    if args.index_path:
        sys.path.append(args.index_path)
    only = set(args.only.split(","))
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores", flush=True)
    lines = []
    with tempfile.TemporaryDirectory(prefix="agile-bench-") as tmp:
        work = Path(tmp)
        if "overhead" in only:
            lines.append(scorer_overhead(max(4, args.repeats + 1)))
            print(lines[-1], flush=True)
            lines.append(overhead(work, args.repeats, args.minutes))
            print(lines[-1], flush=True)
        vectors = None
        if only & {"store", "search", "indexes"}:
            got, vectors = store_and_search(work, args.n, args.queries)
            lines += got
            print("\n".join(got), flush=True)
            shutil.rmtree(work / "season", ignore_errors=True)
        if "indexes" in only and vectors is not None:
            got = indexes(vectors, min(args.index_n, len(vectors)), args.queries)
            lines += got
            print("\n".join(got), flush=True)
        del vectors
        if "head" in only:
            lines.append(head(work))
            print(lines[-1], flush=True)
        if "rescore" in only:
            got = rescore_season(work, args.n, args.labels)
            lines += got
            print("\n".join(got), flush=True)
            shutil.rmtree(work / "rescore", ignore_errors=True)
        if "quality" in only:
            got = quality(work)
            lines += got
            print("\n".join(got), flush=True)
    print("\nagile summary (" + cpu_name() + "):\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
