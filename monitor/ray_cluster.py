"""The Ray engine and its cluster: the CPUs each kind of work reserves, and a watch on the run.

**The resource rule** (``plan_budget``). Scoring must never starve decoding: in Ray a task runs only
where its CPUs are free, and an actor holds its CPUs for the whole run, wherever Ray put it (or put it
again after its node was lost). So on CPUs the actors of a run together reserve the smallest node's
CPUs less one decode task's: ``actor_cpus = (smallest node's CPUs - decode_cpus) / actors``. Even with
every actor on one node (the smallest, and the only one left), one decode task still fits beside them.
At most one decode task per node runs at a time (Ray Data's task pool is capped at the node count):
like the local engine on a CPU, one decoder beside a model that uses the node's cores. On GPUs the
actors reserve no CPU (a GPU each) and decoding is not capped. A decode task needs less than the
smallest node's CPUs (else no node could run it beside an actor): anything else is a one-line error.

**The watch** (``Watch``), driven by the engine's loop between batches: a node that leaves the cluster
(Ray's GCS says so, or its raylet's port refuses connections: seconds after a raylet dies, where the GCS
takes its heartbeat timeout) is one ``monitor: warning:`` line (logged; one that joins, a log line); no finished batch for ``warn_s`` prints and logs
what the run waits for (``describe_wait``: pending resource demands as ``ray status`` shows them, nodes
alive, units left), again every ``warn_s``; past ``stop_s`` the run stops with a one-line error saying
how to resume.

Also here: ``node_cpus`` (what an actor's node offers, for its torch threads) and ``check_reachable`` (a
``--address`` nothing listens on fails in one line).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from monitor.errors import MonitorError
from monitor.logs import warn

log = logging.getLogger(__name__)

WATCH_TICK_S = 2.0  # how often the engine's loop looks at the cluster while it waits for batches
NODES_EVERY_S = 5.0  # how often it asks Ray for the node list


@dataclass(frozen=True)
class Budget:
    """What each kind of work reserves (see the module docstring)."""

    decode_cpus: float
    decode_tasks: int | None  # at most this many decode tasks at once (None: as many as fit)
    actor_cpus: float
    actor_gpus: float

    def describe(self) -> str:
        cap = f"at most {self.decode_tasks} at once" if self.decode_tasks else "as many as fit"
        gpu = f", {self.actor_gpus:g} GPU" if self.actor_gpus else ""
        return f"scoring actors {self.actor_cpus:g} CPU{gpu} each; decode tasks {self.decode_cpus:g} CPU ({cap})"


def _floor4(x: float) -> float:
    """Ray counts fractional resources in 1/10000ths: round down so the sum never exceeds the node."""
    return math.floor(x * 10_000) / 10_000


def plan_budget(node_cpus: Sequence[float], actors: int, on_gpu: bool, decode_cpus: float,
                gpus_per_actor: float) -> Budget:
    """The resource rule (module docstring) for nodes offering ``node_cpus`` (0-CPU nodes run neither)."""
    cpus = [c for c in node_cpus if c > 0]
    if not cpus:
        raise MonitorError("the Ray cluster has no node with CPUs; start one with `ray start --num-cpus N`")
    smallest = min(cpus)
    if on_gpu:
        return Budget(decode_cpus, None, 0.0, gpus_per_actor)
    room = smallest - decode_cpus
    if room <= 0:
        raise MonitorError(f"a decode task's {decode_cpus:g} CPU does not fit beside a scoring actor on the smallest "
                           f"Ray node ({smallest:g} CPU); start nodes with more CPUs")
    return Budget(decode_cpus, len(cpus), _floor4(room / max(1, actors)), 0.0)


@dataclass
class Node:
    node_id: str
    ip: str
    cpus: float
    gpus: float
    port: int = 0


def alive_nodes(ray) -> dict[str, Node]:
    """The nodes Ray's GCS counts alive."""
    out = {}
    for n in ray.nodes():
        if n.get("Alive"):
            res = n.get("Resources", {})
            out[n["NodeID"]] = Node(n["NodeID"], n.get("NodeManagerAddress", "?"), float(res.get("CPU", 0)),
                                    float(res.get("GPU", 0)), int(n.get("NodeManagerPort") or 0))
    return out


def refuses(node: Node, timeout_s: float = 0.5) -> bool:
    """True when the node's raylet port refuses a connection: its raylet is gone (killed, crashed), which Ray's
    GCS only concludes after missing heartbeats for about 15 s or more. A timeout or any other error says
    nothing (False): the GCS decides those."""
    import socket

    if not node.port:
        return False
    try:
        with socket.create_connection((node.ip, node.port), timeout=timeout_s):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def pending_demands(ray) -> str:
    """Resource requests no node can take now (``ray status``'s "Pending Demands"), e.g. ``CPU 0.5 x2``."""
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        parts = []
        for d in status.resource_demands.ray_task_actor_demand:
            for b in d.bundles_by_count:
                res = ", ".join(f"{k} {v:g}" for k, v in sorted(b.bundle.items()))
                parts.append(f"{res} x{b.count}")
        return "; ".join(parts) or "none"
    except Exception as exc:  # noqa: BLE001 - a diagnostic only: say that it is unknown, and why, in the log
        log.debug("Ray did not say its pending demands (%s: %s)", type(exc).__name__, exc)
        return "unknown"


def free_cpus(ray) -> str:
    try:
        free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
        return f"{free:g} of {total:g} CPUs free"
    except Exception as exc:  # noqa: BLE001 - a diagnostic only
        log.debug("Ray did not say its free CPUs (%s: %s)", type(exc).__name__, exc)
        return "free CPUs unknown"


@dataclass
class Watch:
    """The engine's watch on one run (see the module docstring). ``tick()`` between batches, ``batch()``
    when one arrives; ``stalled`` holds the stop message once the run is past ``stop_s`` (0: never)."""

    ray: Any
    warn_s: float
    stop_s: float
    units_left: Callable[[], tuple[int, int]]
    clock: Callable[[], float] = time.monotonic
    nodes: dict[str, Node] = field(default_factory=dict)
    lost: list[Node] = field(default_factory=list)
    stalled: str | None = None
    _last_batch: float = 0.0
    _last_warn: float = 0.0
    _last_nodes: float = 0.0

    def __post_init__(self) -> None:
        self._last_batch = self._last_nodes = self.clock()
        self.nodes = self._poll_nodes(initial=True)

    def batch(self) -> None:
        self._last_batch = self.clock()
        self._last_warn = 0.0

    def idle_s(self) -> float:
        return self.clock() - self._last_batch

    def tick(self, final: bool = False) -> None:
        """Between batches: the node list every ``NODES_EVERY_S`` (``final``: now, and nothing else)."""
        now = self.clock()
        if final or now - self._last_nodes >= NODES_EVERY_S:
            self._last_nodes = now
            self.nodes = self._poll_nodes()
        if final:
            return
        idle = now - self._last_batch
        if self.stop_s and idle >= self.stop_s:
            self.stalled = (f"the Ray run made no progress for {idle:.0f} s ({self.waiting()}); finished files are "
                            "saved: fix the cluster and run the same command again to resume (--stall-stop "
                            "SECONDS waits longer)")
        elif idle >= self.warn_s and now - max(self._last_warn, self._last_batch) >= self.warn_s:
            self._last_warn = now
            warn(f"no batch finished for {idle:.0f} s; waiting for: {self.waiting()}")

    def waiting(self) -> str:
        """What the run waits for, in one line (``describe_wait``)."""
        left, total = self.units_left()
        return describe_wait(pending_demands(self.ray), self.nodes, self.lost, free_cpus(self.ray), left, total)

    def _poll_nodes(self, initial: bool = False) -> dict[str, Node]:
        try:
            now = alive_nodes(self.ray)
        except Exception as exc:  # noqa: BLE001 - the GCS unreachable for a moment: keep the last view
            log.info("Ray's node list unavailable (%s: %s); trying again in %g s", type(exc).__name__, exc,
                     NODES_EVERY_S)
            return self.nodes
        gone = {n.node_id for n in self.lost}
        now = {nid: n for nid, n in now.items() if nid not in gone and not refuses(n)}
        if not initial:
            for nid, n in self.nodes.items():
                if nid not in now:
                    self.lost.append(n)
                    warn(f"Ray node {n.ip} ({n.cpus:g} CPU{f', {n.gpus:g} GPU' if n.gpus else ''}) was lost; "
                         f"{len(now)} node(s) left, its work is redone on them")
            for nid, n in now.items():
                if nid not in self.nodes:
                    log.info("Ray node %s (%g CPU, %g GPU) joined the cluster", n.ip, n.cpus, n.gpus)
        return now


def describe_wait(pending: str, nodes: dict[str, Node], lost: Sequence[Node], free: str, left: int,
                  total: int) -> str:
    """``pending CPU 0.5 x2; 1 node(s) alive (127.0.0.2), 1 lost (127.0.0.3); 0 of 1 CPUs free; 4 of 6 units left``."""
    alive = ", ".join(sorted(n.ip for n in nodes.values()))
    gone = f", {len(lost)} lost ({', '.join(n.ip for n in lost)})" if lost else ""
    return f"pending {pending}; {len(nodes)} node(s) alive ({alive}){gone}; {free}; {left} of {total} units left"


def node_cpus() -> float:
    """CPUs this Ray node offers (``ray start --num-cpus``), else the machine's cores."""
    try:
        import ray

        me = ray.get_runtime_context().get_node_id()
        for n in ray.nodes():
            if n.get("NodeID") == me:
                return float(n.get("Resources", {}).get("CPU", 0)) or float(os.cpu_count() or 1)
    except Exception as exc:  # noqa: BLE001 - outside Ray, or an older API
        log.debug("Ray did not say this node's CPUs (%s); using the machine's cores", exc)
    return float(os.cpu_count() or 1)


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A ``HOST:PORT`` that nothing listens on fails here in one line (``ray.init`` would retry for minutes)."""
    import socket

    if not address or address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise MonitorError(f"--address must be auto or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise MonitorError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
                           "`ray start --head` there, or check the address") from None
