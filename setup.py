"""Which files the wheel holds (project metadata lives in pyproject.toml).

Besides the ``monitor`` code, the wheel carries what the defaults need, from the repository's top-level
folders, as data under ``monitor/_data/``: ``models/`` (the bundled default model), ``configs/`` (the
training recipes, addressable by name) and ``examples/`` (the example SD card with its attributions).
``monitor.resources`` finds them there in an installed package, and in the top-level folders in a checkout.
"""

from __future__ import annotations

import os

from setuptools import find_packages, setup

# wheel package -> top-level folder of the repository
DATA_PACKAGES = {"monitor._data.models": "models", "monitor._data.configs": "configs",
                 "monitor._data.examples": "examples"}
SHIPS = {"configs": (".yaml", ".txt")}  # only recipes and the files they reference; everything under the others


def _files(folder: str) -> list[str]:
    """Every file under ``folder`` (dotfiles and empty files too: the example card has both), relative to it."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(SHIPS.get(folder, ("",))):
                out.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return out


setup(
    packages=find_packages(include=["monitor", "monitor.*"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    package_data={"monitor": ["py.typed", "model/data/*.csv", "model/data/*.md"], **{pkg: _files(folder) for pkg, folder in DATA_PACKAGES.items()}},
    include_package_data=False,
)
