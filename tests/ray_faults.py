"""Faults for the Ray engine's tests, injected through ``RayEngine(decode_fn=..., actor_cls=...)``: nothing of
this is in the package.

How Ray's workers get this code: they never import this module. It is registered with Ray's cloudpickle to be
pickled by value (``register_pickle_by_value``), and run as a script (``python tests/ray_faults.py ...``) it is
``__main__``, which cloudpickle also ships by value; either way a worker on any node unpickles the functions
and classes from the bytes, importing only ``monitor`` (installed there) and the standard library. So neither
``PYTHONPATH`` nor a ``runtime_env`` is needed on the nodes.

As a script it runs ``monitor`` (``monitor.cli.main``) with the Ray engine given the faults named first::

    python tests/ray_faults.py [--decode-delay S] [--decode-hang] [--exit-once FOLDER] [--actor-restarts N] \\
        -- run CARD --out OUT ...
"""

from __future__ import annotations

import functools
import os
import sys
import time

import numpy as np

from monitor.ray_engine import ScoreActor, decode_unit


def slow_decode(row, pre, output, batch_size, max_delay_s: float = 0.3):
    """``decode_unit`` after sleeping a random 0..max_delay_s (results arrive out of order; a run is mid-way
    long enough to kill a node)."""
    time.sleep(np.random.default_rng().uniform(0, max_delay_s))
    return decode_unit(row, pre, output, batch_size)


def hung_decode(row, pre, output, batch_size, hold_s: float = 900.0):
    """A decode task that never finishes in a test's time (an induced stall)."""
    time.sleep(hold_s)
    return decode_unit(row, pre, output, batch_size)


class _ExitOnce(ScoreActor):
    folder = ""

    def __call__(self, batch):
        """The first actor call after FOLDER/armed appears exits the process (an actor that crashes once)."""
        armed = os.path.join(self.folder, "armed")
        try:
            os.rename(armed, os.path.join(self.folder, "fired"))  # atomic: exactly one actor call fires
        except OSError:
            return super().__call__(batch)
        os._exit(1)


def exit_once_actor(folder) -> type:
    """A ``ScoreActor`` whose first call after ``folder/armed`` appears kills its process."""
    return type("ExitOnceActor", (_ExitOnce,), {"folder": str(folder), "__module__": __name__})


def _ship_by_value() -> None:
    if __name__ != "__main__":
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])


_ship_by_value()


def main(argv: list[str]) -> int:
    """``[--decode-delay S] [--decode-hang] [--exit-once FOLDER] [--actor-restarts N] -- monitor arguments``."""
    import monitor.pipeline
    from monitor.cli import main as monitor_main
    from monitor.ray_engine import RayEngine

    sep = argv.index("--")
    opts, rest = argv[:sep], argv[sep + 1:]
    kw: dict = {}
    while opts:
        flag = opts.pop(0)
        if flag == "--decode-delay":
            kw["decode_fn"] = functools.partial(slow_decode, max_delay_s=float(opts.pop(0)))
        elif flag == "--decode-hang":
            kw["decode_fn"] = hung_decode
        elif flag == "--exit-once":
            kw["actor_cls"] = exit_once_actor(opts.pop(0))
        elif flag == "--actor-restarts":
            kw["actor_restarts"] = int(opts.pop(0))
        else:
            raise SystemExit(f"ray_faults: unknown option {flag}")
    monitor.pipeline.RayEngine = functools.partial(RayEngine, **kw)
    return monitor_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
