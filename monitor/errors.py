"""Exceptions that the CLI turns into a one-line message and a non-zero exit."""


class MonitorError(Exception):
    """A failure of the whole run (bad config, bad model, missing folder). The message says what to do."""


class BundleError(MonitorError, ValueError):
    """A model bundle or checkpoint that cannot be used."""
