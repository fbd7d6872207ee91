"""``monitor run --engine ray``: the planned batches decoded in Ray tasks and scored in Ray actors.

The same seam as ``infer.LocalEngine`` (``run(jobs, on_file_done, on_segments)``, ``describe()``,
``name``, context manager), the same plan (``plan.plan_batches``), the same decoding
(``infer.decode_task``) and the same scorer (``infer.Scorer``), so scores are bit-identical to the
local engine's on the CPU.

What runs where:

- driver (this process): discovery, metadata, the plan, the results store, the lock and the reports
  (``pipeline.py``, unchanged); here: the ``Assembler`` that turns batch scores arriving in any order
  into whole files, committed as each completes.
- Ray Data tasks (``flat_map``, one per *unit*): decoding by seeking and the CPU part of the front end.
  A unit is a run of planned decode tasks that covers whole batches: the plan never lets a decode task
  straddle a batch boundary, so a unit is either one decode task (one or more whole batches) or every
  part of one batch too big for the decoded-sample budget (a 384 kHz batch: its parts decode one after
  another inside the unit, so the budget still bounds memory). A unit emits one row per *planned*
  batch (``{"batch": b, "rows": pickled Rows}``): batches are never formed by Ray Data (letting
  ``map_batches`` form them changed scores by ULPs), and no regrouping across tasks is needed.
- Ray Data actors (``map_batches`` with a callable class, one planned batch per call): each loads the
  model bundles once (the bundle is the only source of the preprocessing) and scores through
  ``Scorer``; one GPU (``--gpus-per-actor``) per actor when the cluster has GPUs.

Scores stream back through ``iter_rows`` (consumed by a thread, so the engine's loop can watch the cluster
while it waits: ``ray_cluster.Watch``) in whatever order they finish; a re-delivered batch (a task retried
after a lost node) is ignored. Decode tasks are retried (``max_retries``); an actor that dies, alone or with
its node, is restarted by Ray and its batches retried (``max_restarts``/``max_task_retries``: measured faster
than streaming again, ``benchmarks/scale.py --fault``), and its first batch after the restart makes the
driver say so in one warning line. When Ray still gives up on some work (an actor unreachable after its
node died: ``ActorUnavailableError``, or out of restarts), the driver streams the same plan's unfinished
units again, so batch-mates and scores do not change. The results store is the checkpoint: a driver killed
mid-run resumes on re-run like the local engine. CPUs are reserved so that scoring never starves decoding,
on any node size and after a node is lost (``ray_cluster.plan_budget``).

Inputs must be readable at the same path (or URL) from every node: a shared/NAS mount or a bucket. The
model bundles need not be: the driver puts each bundle's bytes in Ray's object store once, and an actor
on a node without the bundle folder (or with another bundle there) loads that copy.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from monitor.config import STALL_STOP_S, STALL_WARN_S, Preprocess, check_batch_size
from monitor.decode import decode_task
from monitor.device import resolve_precision, set_matmul_policy
from monitor.engine import AUTO_BATCH_CPU, EngineInfo, OnFileDone, OnSegments, check_frontend
from monitor.errors import MonitorError
from monitor.infer import Scorer, prepare_models
from monitor.logs import warn
from monitor.model.bundle import load_bundle
from monitor.plan import (Assembler, BatchPlan, BatchScores, FileJob, Rows, concat_rows, plan_batches,
                          slice_rows)
from monitor.ray_cluster import Budget, Watch, check_reachable, node_cpus, plan_budget
from monitor.ray_logs import RayConsole, descendants, is_ray_process, reap
from monitor.ray_stream import Stream, fault_line, ray_fault_errors

log = logging.getLogger(__name__)

INSTALL_HINT = "the Ray engine needs: pip install 'monitor[ray]'"
RAY_TASK_SAMPLES = 2_000_000  # smaller decode tasks than the local engine's: more units to spread over nodes
RETRIES = 5  # decode task retries; streams lost in a row (no new batch between) before the run stops
ACTOR_RESTARTS = RETRIES  # Ray restarts a dead actor (its batches retried) this often; then the stream fails and the
# driver streams the unfinished units again. Measured faster than re-streaming at once (benchmarks/scale.py --fault)
FAULT_QUIET_S = 60.0  # lost work is one warning line per minute at most (every time in the log)


def import_ray():
    """``ray`` or a one-line ``MonitorError`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MonitorError(INSTALL_HINT) from None
    return ray


def units(plan: BatchPlan) -> list[list[int]]:
    """Runs of consecutive decode-task ids, each covering whole planned batches (see the module docstring)."""
    out: list[list[int]] = []
    cur: list[int] = []
    bs = plan.batch_size
    for t in plan.tasks:
        cur.append(t.id)
        end = t.first + t.n
        if end % bs == 0 or end == plan.n_segments:
            out.append(cur)
            cur = []
    if cur:  # cannot happen for a plan from plan_batches; kept whole rather than lost
        out.append(cur)
    return out


def unit_batches(plan: BatchPlan, unit: list[int]) -> set[int]:
    """The planned batches a unit (task ids from ``units``) holds."""
    bs = plan.batch_size
    first, last = plan.tasks[unit[0]], plan.tasks[unit[-1]]
    return set(range(first.first // bs, (last.first + last.n - 1) // bs + 1))


def split_batches(rows: Rows, batch_size: int) -> list[tuple[int, Rows]]:
    """A unit's rows (starting on a batch boundary) -> ``(batch, Rows)`` per planned batch."""
    out = []
    for i in range(0, rows.n, batch_size):
        part = slice_rows(rows, i, min(rows.n, i + batch_size))
        out.append(((rows.first + i) // batch_size, part))
    return out


def decode_unit(row: dict[str, Any], pre: Preprocess, output: str, batch_size: int) -> list[dict[str, Any]]:
    """Ray Data ``flat_map``: a unit of decode tasks -> one row per planned batch."""
    tasks = pickle.loads(row["unit"])
    rows = concat_rows([decode_task(t, pre, output) for t in tasks])
    return [{"batch": b, "rows": pickle.dumps(r, protocol=5)} for b, r in split_batches(rows, batch_size)]


def bundle_payload(bundle) -> dict[str, bytes]:
    """A bundle's ``bundle.json`` and weights as bytes (shipped once through Ray's object store)."""
    from pathlib import Path

    folder = Path(bundle.path)
    return {name: (folder / name).read_bytes() for name in ("bundle.json", bundle.weights_file)}


def actor_bundles(specs: Sequence[tuple[str, str, Any]]) -> list:
    """On a worker node: each bundle from its folder when the node sees it with the same hash (a shared
    disk, the same install), else from the bytes the driver shipped (``(folder, sha256, ObjectRef)``),
    written to a temporary folder and loaded and checked as any bundle."""
    import tempfile

    out = []
    for folder, sha, ref in specs:
        b = None
        if os.path.isfile(os.path.join(folder, "bundle.json")):
            try:
                b = load_bundle(folder)
            except MonitorError as exc:  # another bundle at that path on this node: use the shipped one
                log.info("bundle at %s on this node not used (%s); loading the driver's copy", folder, exc)
                b = None
            if b is not None and b.sha256 != sha:
                b = None
        if b is None:
            import ray

            if ref is None:
                raise MonitorError(f"the model bundle {folder} is not on {os.uname().nodename}")
            files = ray.get(ref) if not isinstance(ref, dict) else ref
            dst = tempfile.mkdtemp(prefix="monitor-bundle-")
            for name, data in files.items():
                with open(os.path.join(dst, name), "wb") as fh:
                    fh.write(data)
            b = load_bundle(dst)
            if b.sha256 != sha:
                raise MonitorError(f"the model bundle shipped to {os.uname().nodename} changed on the way")
            log.info("bundle %s loaded from the driver's copy (%s is not on this node)", b.name, folder)
        out.append(b)
    return out


class ScoreActor:
    """A Ray Data actor: the bundles loaded once, one planned batch per call -> pickled ``BatchScores``; its
    first batch after Ray restarted it (it died) says so (``restarted``), for the driver's one warning line."""

    def __init__(self, bundle_specs: Sequence[tuple[str, str, Any]], device: str, precision: str, batch_size: int,
                 threads: int | None = None, per_node: int = 1):
        import torch

        if device == "cpu":  # Ray sets one OpenMP thread per reserved CPU; the model gets its node's CPUs
            torch.set_num_threads(int(threads) if threads else max(1, int(node_cpus()) // max(1, per_node)))
        set_matmul_policy()
        bundles = actor_bundles(bundle_specs)
        nets, precision = prepare_models(bundles, device, precision)
        self.scorer = Scorer(bundles, nets, device, precision, batch_size, pre=bundles[0].preprocessing)
        self.restarted = reconstructed()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for b, blob in zip(batch["batch"], batch["rows"]):
            rows: Rows = pickle.loads(blob)
            scores = self.scorer.collect(self.scorer.submit(rows))
            out.append(pickle.dumps(BatchScores(int(b), rows.first, scores, rows.nonfinite, rows.errors), protocol=5))
        restarted, self.restarted = self.restarted, False
        return {"batch": np.asarray(batch["batch"]), "scores": np.array(out, dtype=object),
                "restarted": np.full(len(out), restarted)}


def reconstructed() -> bool:
    """In a Ray actor: whether Ray restarted it (its process died)."""
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception as exc:  # noqa: BLE001 - outside an actor: not restarted; say why in the log
        log.debug("not a restarted Ray actor (%s: %s)", type(exc).__name__, exc)
        return False


def _probe_gpu(bundle_specs: Sequence[tuple[str, str, Any]], precision: str, batch_size: int | str,
               kind: str) -> tuple[str, int]:
    """On a GPU worker: the resolved precision (by that GPU's capability) and ``--batch-size auto``."""
    bundles = actor_bundles(bundle_specs)
    nets, precision = prepare_models(bundles, "cuda", precision)
    s = Scorer(bundles, nets, "cuda", precision, 1, pre=bundles[0].preprocessing)
    return precision, int(batch_size) if batch_size != "auto" else s.probe_batch_size(kind)


class RayEngine:
    """Decode in Ray tasks, score in Ray actors; the driver assembles files and calls back (see module doc).

    ``address``: ``None`` starts a Ray instance on this machine (stopped on close, its processes waited
    for), ``auto`` or ``HOST:PORT`` joins a running cluster (an already initialised Ray in this process is
    used as it is). ``actors``: scoring actors (default: GPUs // gpus_per_actor with GPUs, else one per
    node). ``gpus_per_actor``: default 1 when the cluster has GPUs. ``threads``: torch threads per CPU actor
    (default: the node's CPUs / its actors). ``decode_cpus``: CPUs each decode task reserves (the actors'
    share follows: ``ray_cluster.plan_budget``). ``task_samples``: the decode tasks' decoded-sample budget
    (smaller: more, smaller units to spread over the cluster; batches, and so scores, do not change).
    ``stall_warn_s``/``stall_stop_s``: the watch (``ray_cluster.Watch``; None: ``config``'s defaults, stop 0:
    never). ``actor_restarts``: Ray's own restarts of a dead actor (0: the stream fails at once and the
    driver streams the unfinished units again, which measured slower). ``decode_fn``/``actor_cls``: what decodes a unit
    (``decode_unit``'s signature) and what scores (``ScoreActor``'s); tests pass slowed or failing ones.
    ``shuffle_seed`` (tests): feed the units shuffled.
    """

    name = "ray"

    def __init__(self, bundles: Sequence, *, address: str | None = None, actors: int | None = None,
                 gpus_per_actor: float | None = None, device: str = "auto", precision: str = "auto",
                 batch_size: int | str = "auto", frontend: str = "auto", threads: int | None = None,
                 decode_cpus: float = 0.5, shuffle_seed: int | None = None, init_kwargs: dict | None = None,
                 task_samples: int = RAY_TASK_SAMPLES, stall_warn_s: float | None = None,
                 stall_stop_s: float | None = None, actor_restarts: int = ACTOR_RESTARTS,
                 decode_fn: Callable[..., list] = decode_unit, actor_cls: type = ScoreActor):
        self.bundles = list(bundles)
        missing = [b.name for b in self.bundles if b.path is None]
        if missing:
            raise MonitorError(f"the Ray engine loads bundles from their folders; {missing[0]} has none")
        self.bundle_dirs = [str(b.path) for b in self.bundles]
        self.pre = self.bundles[0].preprocessing
        batch_size = check_batch_size(batch_size)
        if actors is not None and int(actors) < 1:
            raise MonitorError(f"--actors must be >= 1, got {actors}")
        if gpus_per_actor is not None and float(gpus_per_actor) < 0:
            raise MonitorError(f"--gpus-per-actor must be >= 0, got {gpus_per_actor}")
        check_frontend(frontend)
        self.address, self.requested_device, self.requested_precision = address, device, precision
        self.batch_size: int | str = batch_size
        self.frontend_req, self.threads, self.decode_cpus = frontend, threads, float(decode_cpus)
        self.shuffle_seed, self.task_samples = shuffle_seed, int(task_samples)
        self.stall_warn_s = float(STALL_WARN_S if stall_warn_s is None else stall_warn_s)
        self.stall_stop_s = float(STALL_STOP_S if stall_stop_s is None else stall_stop_s)
        self.actor_restarts, self.decode_fn, self.actor_cls = int(actor_restarts), decode_fn, actor_cls
        self.ray = import_ray()
        self.console = RayConsole()
        self._started = False
        self._specs: list | None = None
        t0 = time.perf_counter()
        try:
            self._connect(init_kwargs or {})
        except BaseException:
            self.console.uninstall()
            raise
        self.startup_s = time.perf_counter() - t0
        try:
            self._configure(device, precision, actors, gpus_per_actor, frontend)
        except BaseException:
            self.close()  # a Ray started here stops with a bad option
            raise

    def _configure(self, device: str, precision: str, actors: int | None, gpus_per_actor: float | None,
                   frontend: str) -> None:
        res = self.ray.cluster_resources()
        self.cluster_cpus, self.cluster_gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        self.nodes = len(alive)
        self.node_cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in alive]
        if device == "auto":
            device = "cuda" if self.cluster_gpus > 0 else "cpu"
        if device not in ("cpu", "cuda"):
            raise MonitorError(f"the Ray engine scores on cpu or cuda, got --device {device}")
        if device == "cuda" and self.cluster_gpus <= 0:
            raise MonitorError("--device cuda: the Ray cluster has no GPUs")
        self.device = device
        on_gpu = device == "cuda"
        self.gpus_per_actor = float(gpus_per_actor if gpus_per_actor is not None else (1.0 if on_gpu else 0.0))
        if on_gpu and self.gpus_per_actor <= 0:
            raise MonitorError("--device cuda needs --gpus-per-actor > 0")
        if actors is None:
            actors = max(1, int(self.cluster_gpus // self.gpus_per_actor)) if on_gpu else self.nodes
        self.actors = int(actors)
        self.budget: Budget = plan_budget(self.node_cpus, self.actors, on_gpu, self.decode_cpus, self.gpus_per_actor)
        self.frontend = ("device" if on_gpu else "cpu") if frontend == "auto" else frontend
        self.precision = precision
        if not on_gpu:
            self.precision = resolve_precision(precision, "cpu")
            if self.batch_size == "auto":
                self.batch_size = AUTO_BATCH_CPU
        log.info("Ray engine: %s (start-up %.1f s), %d node(s), %g CPUs, %g GPUs; %d actor(s): %s",
                 self.address or "local instance", self.startup_s, self.nodes, self.cluster_cpus, self.cluster_gpus,
                 self.actors, self.budget.describe())

    def _connect(self, init_kwargs: dict) -> None:
        ray = self.ray
        self.console.install()
        if ray.is_initialized():
            self.console.install_core()
            return
        # workers' output stays in Ray's session logs (log_to_driver off), not on the console
        kw: dict[str, Any] = dict(log_to_driver=False, include_dashboard=False, configure_logging=False)
        kw.update(init_kwargs)
        check_reachable(self.address)
        root = logging.getLogger()
        keep = list(root.handlers), root.level
        try:
            ctx = ray.init(address=self.address, **kw)
        except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            where = self.address or "a new local instance"
            raise MonitorError(f"cannot reach the Ray cluster at {where}: {text[:200]}") from None
        finally:  # Ray may configure the root logger: ours stays as it was
            for h in list(root.handlers):
                if h not in keep[0]:
                    root.removeHandler(h)
            root.setLevel(keep[1])
            self.console.install()
        self._started = True
        self.console.install_core()  # after ray.init: the local instance's processes keep the real stderr
        logs = getattr(ctx, "address_info", {}).get("session_dir") if ctx is not None else None
        if logs:
            log.info("Ray's own logs (workers, actors, Ray Data, the driver's core: python-core-driver-*.log): "
                     "%s/logs", logs)

    def describe(self) -> EngineInfo:
        self._resolve_gpu()  # GPU runs: precision and batch size as a GPU worker resolves them
        return EngineInfo(self.name, self.device, self.precision, self.batch_size, frontend=self.frontend,
                          actors=self.actors, gpus_per_actor=self.gpus_per_actor, address=self.address or "local",
                          nodes=self.nodes)

    def _resolve_gpu(self) -> None:
        """Precision and ``--batch-size auto`` measured on a GPU worker (the driver may have no GPU)."""
        if self.device != "cuda" or (self.precision != "auto" and self.batch_size != "auto"):
            return
        kind = "waves" if self.frontend == "device" else "features"
        probe = self.ray.remote(_probe_gpu).options(num_gpus=self.gpus_per_actor, max_retries=RETRIES)
        self.precision, self.batch_size = self.ray.get(probe.remote(self.bundle_specs(), self.precision,
                                                                     self.batch_size, kind))

    def bundle_specs(self) -> list[tuple[str, str, Any]]:
        """``(folder, sha256, ObjectRef of its bytes)`` per bundle; the bytes are put once per engine."""
        if self._specs is None:
            ship = self.address is not None or self.nodes > 1  # a local instance's one node has the folder
            self._specs = [(d, b.sha256, self.ray.put(bundle_payload(b)) if ship else None)
                           for d, b in zip(self.bundle_dirs, self.bundles)]
        return self._specs

    def run(self, jobs: Sequence[FileJob], on_file_done: OnFileDone, on_segments: OnSegments | None = None) -> None:
        jobs = list(jobs)
        if not jobs:
            return
        from ray.data import DataContext

        self._resolve_gpu()
        bs = int(self.batch_size)
        plan = plan_batches(jobs, self.pre, bs, self.task_samples)
        groups = units(plan)
        if self.shuffle_seed is not None:
            np.random.default_rng(self.shuffle_seed).shuffle(groups)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        asm = Assembler(plan, len(self.bundles[0].labels), in_order=False)
        seen: set[int] = set()

        def left() -> list[list[int]]:
            return [u for u in groups if not unit_batches(plan, u) <= seen]

        watch = Watch(self.ray, self.stall_warn_s, self.stall_stop_s, lambda: (len(left()), len(groups)))
        lost = ray_fault_errors(self.ray)
        # when lost work was last said on the console (a node's death: 1-2 faults); streams lost since, whose
        # actor may come back restarted (one death, one line)
        said = {"at": -FAULT_QUIET_S, "streamed": 0}

        def fault(text: str) -> None:
            if time.monotonic() - said["at"] >= FAULT_QUIET_S:
                warn(text)
                said["at"] = time.monotonic()
            else:
                log.info("%s", text)

        failed = 0  # streams lost in a row without a new batch: past RETRIES the run stops
        while todo := left():
            stream = self._stream(plan, todo)
            before = len(seen)
            try:
                for res, restarted in stream.results(watch):
                    if restarted and said["streamed"]:
                        said["streamed"] -= 1  # the actor whose loss broke a stream: said already
                        log.info("a scoring actor Ray restarted after the loss said above")
                    elif restarted:
                        fault("a scoring actor died and Ray restarted it; its batches are scored again")
                    if res.batch in seen:
                        continue  # re-delivered (a retried task): already counted
                    seen.add(res.batch)
                    for job, scores in asm.add(res):
                        on_file_done(job, scores)
                    if on_segments:
                        on_segments(len(res.nonfinite))
                break
            except lost as exc:  # an actor or node Ray did not recover in place: the same plan's unfinished units again
                failed = 1 if len(seen) > before else failed + 1
                if failed > RETRIES:
                    raise MonitorError(f"the Ray cluster kept losing work ({type(exc).__name__}); run the same "
                                       "command again to resume from what is done") from exc
                said["streamed"] += 1
                fault(f"Ray lost a scoring actor or decoded work ({type(exc).__name__}); streaming the "
                      f"{len(left())} unfinished of {len(groups)} unit(s) again")
                log.info("Ray fault: %s", fault_line(exc), exc_info=True)
            finally:
                stream.close()
        watch.tick(final=True)  # a node lost near the end is still said
        if asm.pending:
            raise MonitorError(f"the Ray engine lost {asm.pending} file(s): {plan.n_batches - len(seen)} batches "
                               "never came back; run the same command again to resume")

    def _stream(self, plan: BatchPlan, todo: list[list[int]]) -> "Stream":
        """Decode ``todo`` (units of ``plan``) in Ray tasks, score them in the actor pool: a ``Stream`` of
        ``BatchScores`` as they arrive (any order, maybe re-delivered)."""
        ray, bs, b = self.ray, plan.batch_size, self.budget
        items = [{"unit": pickle.dumps([plan.tasks[i] for i in u], protocol=5)} for u in todo]
        output = "waves" if self.frontend == "device" else "features"
        restarts = dict(max_restarts=self.actor_restarts, max_task_retries=self.actor_restarts)
        with warnings.catch_warnings():  # retry counts are ray_remote_args, deprecated from Ray 2.64 (pinned < 2.61)
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            ds = ds.flat_map(self.decode_fn, fn_kwargs=dict(pre=self.pre, output=output, batch_size=bs),
                             compute=ray.data.TaskPoolStrategy(size=b.decode_tasks), num_cpus=b.decode_cpus,
                             max_retries=RETRIES)
            ds = ds.map_batches(
                self.actor_cls, fn_constructor_kwargs=dict(
                    bundle_specs=self.bundle_specs(), device=self.device, precision=self.precision, batch_size=bs,
                    threads=self.threads, per_node=-(-self.actors // max(1, self.nodes))),
                batch_size=1, compute=ray.data.ActorPoolStrategy(size=self.actors), batch_format="numpy",
                num_cpus=b.actor_cpus, num_gpus=b.actor_gpus or None, **restarts)
        return Stream(ds)

    def close(self) -> None:
        self._specs = None
        procs = []
        if self._started and self.ray.is_initialized():
            if self.address is None:  # a local instance: its processes (actors too) are this process's descendants
                procs = [p for p in descendants() if is_ray_process(p)]
            self.ray.shutdown()
        self._started = False
        reap(procs)  # they end with the run, not seconds after it
        self.console.uninstall()

    def __enter__(self) -> "RayEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
