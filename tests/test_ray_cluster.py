"""The Ray engine's resource rule, its watch and its stderr routing (issue 25), without a cluster: ``plan_budget`` on
any node sizes, ``Watch`` on a fake Ray whose nodes die and whose batches stop, ``CoreStderr`` on this process."""

from __future__ import annotations

import pytest

from monitor.errors import MonitorError
from monitor.ray_cluster import Watch, describe_wait, plan_budget


@pytest.mark.parametrize("nodes", [[1, 1], [1, 1, 1], [2, 2], [1, 4, 16], [16, 16], [3], [0, 1, 1]])
@pytest.mark.parametrize("actors", [1, 2, 3, 8])
def test_scoring_never_starves_decoding_even_with_every_actor_on_the_smallest_node(nodes, actors):
    b = plan_budget(nodes, actors, on_gpu=False, decode_cpus=0.5, gpus_per_actor=0.0)
    smallest = min(c for c in nodes if c > 0)
    assert b.actor_cpus > 0
    assert actors * b.actor_cpus + b.decode_cpus <= smallest + 1e-9  # all actors on one node: a decode task fits
    assert b.decode_tasks == len([c for c in nodes if c > 0])  # one decoder per node beside the model
    if actors == 1:
        assert b.actor_cpus == smallest - 0.5  # one actor: the node's CPUs less one decode task, as before


def test_gpu_actors_reserve_no_cpu_and_decoding_is_not_capped():
    b = plan_budget([8, 8], 2, on_gpu=True, decode_cpus=0.5, gpus_per_actor=1.0)
    assert (b.actor_cpus, b.actor_gpus, b.decode_tasks) == (0.0, 1.0, None)


def test_a_decode_task_that_cannot_fit_beside_an_actor_is_one_line():
    with pytest.raises(MonitorError, match="does not fit beside a scoring actor"):
        plan_budget([1, 4], 1, on_gpu=False, decode_cpus=1.0, gpus_per_actor=0.0)
    with pytest.raises(MonitorError, match="no node with CPUs"):
        plan_budget([0], 1, on_gpu=False, decode_cpus=0.5, gpus_per_actor=0.0)


class FakeRay:
    """Just what ``Watch`` asks of Ray: nodes, free CPUs, the GCS address (pending demands: unknown here)."""

    def __init__(self) -> None:
        self.alive = {"a": "127.0.0.2", "b": "127.0.0.3"}

    def nodes(self):
        return [{"NodeID": k, "Alive": True, "NodeManagerAddress": ip, "Resources": {"CPU": 1.0}}
                for k, ip in self.alive.items()]

    def available_resources(self):
        return {"CPU": 0.0}

    def cluster_resources(self):
        return {"CPU": float(len(self.alive))}

    def get_runtime_context(self):
        raise RuntimeError("no GCS in this test")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_watch_says_a_lost_node_once_a_stall_every_warn_s_and_stops_past_stop_s(caplog):
    def said() -> list[str]:  # logs.warn's lines ('monitor: warning: ...' on the console of `monitor run`)
        out = [r.getMessage() for r in caplog.records if r.name == "monitor" and r.levelname == "WARNING"]
        caplog.clear()
        return out

    ray, clock = FakeRay(), Clock()
    w = Watch(ray, warn_s=60, stop_s=300, units_left=lambda: (4, 6), clock=clock)
    clock.t = 10
    del ray.alive["b"]
    w.tick()
    w.tick()
    assert said() == ["Ray node 127.0.0.3 (1 CPU) was lost; 1 node(s) left, its work is redone on them"]
    clock.t = 30
    w.batch()
    clock.t = 80
    w.tick()
    assert said() == []  # 50 s without a batch: not yet
    clock.t = 95
    w.tick()
    lines = said()
    assert len(lines) == 1 and lines[0].startswith("no batch finished for 65 s; waiting for: "), lines
    assert "1 node(s) alive (127.0.0.2), 1 lost (127.0.0.3); 0 of 1 CPUs free; 4 of 6 units left" in lines[0]
    clock.t = 120
    w.tick()
    assert said() == []  # said once per warn_s
    clock.t = 160
    w.tick()
    assert "no batch finished for 130 s" in said()[0]
    assert w.stalled is None
    clock.t = 331
    w.tick()
    assert w.stalled and w.stalled.startswith("the Ray run made no progress for 301 s (pending unknown; ")
    assert "run the same command again to resume" in w.stalled


def test_the_watch_never_stops_with_stop_s_zero():
    clock = Clock()
    w = Watch(FakeRay(), warn_s=1e9, stop_s=0, units_left=lambda: (1, 1), clock=clock)
    clock.t = 1e6
    w.tick()
    assert w.stalled is None


def test_describe_wait_in_one_line():
    assert describe_wait("CPU 0.5 x2", {}, [], "0 of 1 CPUs free", 3, 6) == (
        "pending CPU 0.5 x2; 0 node(s) alive (); 0 of 1 CPUs free; 3 of 6 units left")


def test_a_raylet_port_that_refuses_connections_is_a_lost_node():
    import socket

    from monitor.ray_cluster import Node, refuses

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert not refuses(Node("a", "127.0.0.1", 1.0, 0.0, port))  # something listens: alive
    assert refuses(Node("a", "127.0.0.1", 1.0, 0.0, port))  # nothing listens any more: its raylet is gone
    assert not refuses(Node("a", "127.0.0.1", 1.0, 0.0, 0))  # no port known: the GCS decides


def test_core_lines_on_descriptor_2_go_to_the_log_and_the_rest_on(capfd, monkeypatch):
    """``ray_logs.CoreStderr``: what Ray's C++ core writes to descriptor 2 is logged, anything else passes on
    unchanged (a partial line too), and descriptor 2 is whole again after ``stop()``."""
    import logging
    import os
    import time

    from monitor.ray_logs import CoreStderr

    ray_logger = logging.getLogger("ray")  # as the engine leaves it (logs.files_only): no handler of Ray's own
    monkeypatch.setattr(ray_logger, "handlers", [])
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    monkeypatch.setattr(logging.getLogger("ray.core"), "handlers", [handler])
    core = CoreStderr()
    core.start()
    try:
        os.write(2, b"plain line\n[2026-12-04 15:17:25,513 E 15350 15350] core_worker.cc:2465: Actor with class "
                    b"name: 'X' has constructor arguments in the object store and max_restarts > 0.\n")
        os.write(2, b"[not a core line]\n")
        os.write(2, b"[2026-12-04 15:17:26,001 W 15350 15351] split ")  # one line in two writes
        time.sleep(0.05)
        os.write(2, b"across writes\n")
        os.write(2, b"partial")
        time.sleep(0.5)
    finally:
        core.stop()
    os.write(2, b" after\n")
    err = capfd.readouterr().err
    assert err == "plain line\n[not a core line]\npartial after\n", repr(err)
    core = [r.getMessage() for r in records]
    assert len(core) == 2 and core[0].startswith("[2026-12-04 15:17:25,513 E 15350 15350] core_worker.cc:2465: ")
    assert core[1] == "[2026-12-04 15:17:26,001 W 15350 15351] split across writes"
