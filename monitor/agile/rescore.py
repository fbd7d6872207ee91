"""``monitor report OUT --rescore BUNDLE``: a head applied to every stored embedding of an output folder.

Every card's stored segments get the new head's scores (``model.head.Head``: the scores ``monitor run
--embeddings`` with that bundle gives the same segments), the folder is bound to the new bundle (labels,
thresholds, model hash: a later ``monitor run --model BUNDLE`` resumes instead of redoing the files), and the
reports are rebuilt as a run would. Verdicts are keyed by (deployment, file, label, start) and never touched:
those on labels the new head lacks stay in the store and on the "Reviewed below threshold" sheet. Refused in
one line, before anything changes, when the bundle's backbone did not make the stored embeddings, or when an
analysed file has none.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from monitor.backbone import check_backbone
from monitor.decode import one_torch_thread
from monitor.detect import label_filter
from monitor.errors import MonitorError
from monitor.logs import listing, plural, say
from monitor.outdir import check_writable, current_thresholds, harvest_reviews, open_out, write_outputs
from monitor.results import ModelRef, RunInfo

log = logging.getLogger(__name__)

CHUNK = 1 << 15  # segments the head scores at once (float64 scratch: 200 MB at width 768)


def rescore(out_dir: Path | str, bundle_ref: str | Path, thresholds: Mapping[str, float] | None = None,
            labels: Sequence[str] | None = None, command: str = "") -> RunInfo:
    """Apply ``bundle_ref``'s head to ``out_dir``'s stored embeddings; returns the rebuilt reports' ``RunInfo``."""
    import torch

    from monitor.model.bundle import load_bundle

    out_dir = Path(out_dir)
    b = load_bundle(bundle_ref)
    with open_out(out_dir) as store:
        found = harvest_reviews(store, out_dir)  # verdicts typed into any workbook, before anything changes
        bb = check_backbone(store, b, "a head applies only to embeddings of its own backbone")
        missing = store.files_without_embeddings(bb)
        if missing:
            raise MonitorError(f"--rescore: {plural(len(missing), 'analysed file')} in {out_dir} have no stored "
                               f"embeddings ({listing([f'{d}/{f}' for d, f in missing], 3)}); run their card again "
                               "with --embeddings first")
        check_writable(out_dir)
        head = b.head()
        t0 = time.perf_counter()
        n = 0
        with store.transaction(), one_torch_thread():
            pending: list[tuple[str, str, np.ndarray, np.ndarray]] = []

            def flush() -> None:  # the head on many files' rows at once, then each file's scores written
                scores = head.scores(torch.from_numpy(np.concatenate([v for *_, v in pending])), b.task).numpy()
                k = 0
                for d, f, idx, _ in pending:
                    store.put_scores(d, f, idx, scores[k:k + len(idx)])
                    k += len(idx)
                pending.clear()

            for d, f in store.embedding_files(bb):
                idx, vec = store.file_embeddings(d, f)
                if vec.shape[1] != head.width:
                    raise MonitorError(f"{b.name}'s head takes {head.width}-wide embeddings, the store holds "
                                       f"{vec.shape[1]}")
                pending.append((d, f, idx, vec))
                n += len(idx)
                if sum(len(p[2]) for p in pending) >= CHUNK:
                    flush()
            if pending:
                flush()
            before = store.get_meta("model")
            store.rebind_model(b.sha256, b.labels, f"{b.name} {b.version}")
            store.set_meta("bundle_thresholds", dict(b.thresholds))
            dropped = store.user_thresholds()
            store.set_user_thresholds({})
            keep = [x for x in (store.get_meta("label_filter") or []) if x in b.labels]
            store.set_meta("label_filter", keep or None)
            if labels is not None:
                store.set_meta("label_filter", label_filter(b.labels, labels))
        seconds = time.perf_counter() - t0
        ref = ModelRef(b.name, b.version, b.sha256, str(b.path or ""))
        info = RunInfo.from_json(store.get_meta("run_info"))
        info = dataclasses.replace(info, model=ref, models=[ref], labels=list(b.labels), task=b.task,
                                   thresholds=dict(b.thresholds), command=command or info.command, card=0,
                                   card_name="", card_counts={})
        run_id = store.begin_run("", {"rescore": b.name, "from": before, "segments": n})
        say(f"rescored {plural(n, 'segment')} from stored embeddings with {b.name} {b.version} in {seconds:.1f} s"
            + (f" (was {before})" if before else ""))
        if dropped:
            say(f"thresholds set with --threshold for the previous model ({listing(sorted(dropped), 4)}) were cleared: "
                f"{b.name}'s own thresholds apply")
        thr = current_thresholds(store, info, thresholds)
        info = write_outputs(out_dir, store, thr, info, found)
        store.end_run(run_id, True, {"rescore": b.name, "from": before, "segments": n, "seconds": round(seconds, 3)})
    return info
