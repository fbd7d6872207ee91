"""The AST model, checkpoint loaders and model bundles (torch is imported only by the submodules)."""

from __future__ import annotations

from typing import Any

from monitor.model.geometry import Geometry  # torch-free


def from_official_checkpoint(*args: Any, **kwargs: Any):
    """See :func:`monitor.model.checkpoints.from_official_checkpoint`."""
    from monitor.model.checkpoints import from_official_checkpoint as f

    return f(*args, **kwargs)


def from_hf_checkpoint(*args: Any, **kwargs: Any):
    """See :func:`monitor.model.checkpoints.from_hf_checkpoint`."""
    from monitor.model.checkpoints import from_hf_checkpoint as f

    return f(*args, **kwargs)


__all__ = ["Geometry", "from_official_checkpoint", "from_hf_checkpoint"]
