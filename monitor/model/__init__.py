"""The AST model (``ast``, ``geometry``), checkpoint loaders (``checkpoints``), model bundles (``bundle``) and
ensembles (``ensemble``); torch is imported only by the submodules that need it."""

from monitor.model.geometry import Geometry  # torch-free

__all__ = ["Geometry"]
