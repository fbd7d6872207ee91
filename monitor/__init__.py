"""monitor: field bioacoustic monitoring with the Audio Spectrogram Transformer.

Importing this package is cheap (no torch); heavy modules load on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "run", "load_bundle", "example_card"]


def run(input_dir, out_dir, **options):
    """Run the detector over an SD-card folder into ``out_dir``; ``options`` are ``monitor.config.RunConfig``'s
    (``models``, ``batch_size``, ``thresholds``, ...). Returns the run's ``RunInfo``."""
    from monitor.config import RunConfig
    from monitor.pipeline import run as _run

    return _run(RunConfig(input_dir, out_dir, **options))


def load_bundle(*args, **kwargs):
    """Load a model bundle by name or path; see :func:`monitor.model.bundle.load_bundle`."""
    from monitor.model.bundle import load_bundle as _load

    return _load(*args, **kwargs)


def example_card(*args, **kwargs):
    """Write the packaged example SD card into a folder; see :func:`monitor.resources.example_card`."""
    from monitor.resources import example_card as _card

    return _card(*args, **kwargs)
