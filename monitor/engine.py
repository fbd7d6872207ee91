"""The engine seam: what ``monitor run`` scores through, whatever runs the work.

An ``Engine`` takes the files to score (``plan.FileJob``), follows the one batch plan
(``plan.plan_batches``), calls ``on_file_done(job, FileScores)`` as each file completes and
``on_segments(n)`` as segments are scored; an exception raised by either stops it. Two engines
implement it: ``LocalEngine`` (here: worker processes decode, this process scores) and
``ray_engine.RayEngine`` (Ray tasks decode, Ray actors score). ``make_engine`` picks one from a run's
options.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

from monitor.config import check_batch_size
from monitor.decode import WorkerPool, default_workers
from monitor.device import all_devices, pick_device, resolve_precision, set_matmul_policy
from monitor.errors import MonitorError
from monitor.int8 import available
from monitor.infer import AUTO_BATCH_CPU, Scorer, prepare_models, score_planned
from monitor.plan import Assembler, FileJob, FileScores, iter_batches, plan_batches

log = logging.getLogger(__name__)

FRONTENDS = ("auto", "cpu", "device")

OnFileDone = Callable[[FileJob, FileScores], None]
OnSegments = Callable[[int], None]


@dataclass(frozen=True)
class EngineInfo:
    """What an engine resolved (written to ``run.json``): device, precision, batch size and where work ran."""

    engine: str
    device: str
    precision: str
    batch_size: int | str
    workers: int = 0
    devices: tuple[str, ...] = ()
    frontend: str = "cpu"
    compile: bool = False
    int8_runtime: str = ""
    actors: int = 0
    gpus_per_actor: float = 0.0
    address: str = ""
    nodes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Engine(Protocol):
    """What ``monitor run`` needs of an engine (a context manager: ``close`` on exit)."""

    name: str

    def describe(self) -> EngineInfo: ...

    def run(self, jobs: Sequence[FileJob], on_file_done: OnFileDone, on_segments: OnSegments | None = None) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Engine": ...

    def __exit__(self, *exc: object) -> None: ...


def check_frontend(frontend: str) -> str:
    if frontend not in FRONTENDS:
        raise MonitorError(f"frontend must be auto, cpu or device, got {frontend!r}")
    return frontend


class LocalEngine:
    """Decode and front end in worker processes (or in process), scoring in this process.

    Worker processes start on construction, so their imports overlap the caller's discovery and
    model loading. ``run`` plans the batches (``plan.plan_batches``), calls ``on_file_done(job,
    FileScores)`` in job order as each file completes and ``on_segments(n)`` as segments are scored; an
    exception raised by either stops the run (the caller's Ctrl-C handling raises ``KeyboardInterrupt``
    from ``on_segments``).

    ``batch_size``: an int, or ``auto`` (16 on a CPU; from free GPU memory, see
    ``Scorer.probe_batch_size``). ``devices``: where to score (default: every GPU for ``cuda``).
    ``frontend``: where fbank runs: ``cpu`` (in the workers), ``device`` (batched on the scoring
    device, ``frontend.FrontEnd`` there), ``auto`` (device on a GPU). ``compile``: ``torch.compile`` the models.
    ``embeddings``: ``FileScores.embeddings`` carries each segment's float16 embedding (one model, one
    backbone pass for scores and embeddings: ``Scorer``).
    """

    name = "local"

    def __init__(self, bundles: Sequence, *, device: str = "auto", precision: str = "auto",
                 batch_size: int | str = "auto", workers: int | None = None, compile: bool = False,
                 devices: Sequence[str] | None = None, frontend: str = "auto", embeddings: bool = False):
        self.bundles = list(bundles)
        self.embeddings = bool(embeddings)
        self.pre = self.bundles[0].preprocessing
        self.device = pick_device(device)
        self.devices = list(devices) if devices else all_devices(self.device)
        self.precision = resolve_precision(precision, self.devices[0])
        on_gpu = self.devices[0].startswith("cuda")
        self.frontend = ("device" if on_gpu else "cpu") if check_frontend(frontend) == "auto" else frontend
        batch_size = check_batch_size(batch_size)
        self.batch_size: int | str = AUTO_BATCH_CPU if batch_size == "auto" and not on_gpu else batch_size
        self.compile = bool(compile)
        self.workers = default_workers(self.device) if workers is None else int(workers)
        self.pool = WorkerPool(self.pre, self.workers, "waves" if self.frontend == "device" else "features")
        self._scorers: list[Scorer] | None = None

    def describe(self) -> EngineInfo:
        runtime = ""
        if self.precision == "int8":
            runtime = "onnxruntime" if available() else "torch"
        return EngineInfo(self.name, self.device, self.precision, self.batch_size, workers=self.workers,
                          devices=tuple(self.devices), frontend=self.frontend, compile=self.compile,
                          int8_runtime=runtime, extra={"embeddings": True} if self.embeddings else {})

    def scorers(self) -> list[Scorer]:
        """A model replica and a scorer per device; resolves ``batch_size`` auto on the first."""
        set_matmul_policy()
        out = []
        for dev in self.devices:
            nets, _ = prepare_models(self.bundles, dev, self.precision, compile=self.compile)
            out.append(Scorer(self.bundles, nets, dev, self.precision,
                              self.batch_size if isinstance(self.batch_size, int) else 1, pre=self.pre,
                              embeddings=self.embeddings))
        if self.batch_size == "auto":
            kind = "waves" if self.frontend == "device" else "features"
            self.batch_size = min(s.probe_batch_size(kind) for s in out)
        for s in out:
            s.batch_size = int(self.batch_size)
        return out

    def run(self, jobs: Sequence[FileJob], on_file_done: OnFileDone, on_segments: OnSegments | None = None) -> None:
        jobs = list(jobs)
        if not jobs:
            return
        if self._scorers is None:  # once per engine: a cascade (``monitor.cascade``) calls run once per chunk
            self._scorers = self.scorers()
        scorers = self._scorers
        plan = plan_batches(jobs, self.pre, int(self.batch_size))
        asm = Assembler(plan, len(self.bundles[0].labels))
        batches = iter_batches(plan, self.pool.results(plan.tasks))
        for res in score_planned(batches, scorers):
            for job, scores in asm.add(res):
                on_file_done(job, scores)
            if on_segments:
                on_segments(len(res.nonfinite))

    def close(self) -> None:
        self.pool.__exit__()

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
