"""Installed package versions, read from package metadata: milliseconds, and nothing of the package imported.

The one lookup doctor, the run manifest, export's lineage, the LLaMA-Factory key snapshot and the eval worker
use. Standard library only: the eval worker imports it under the vLLM interpreter.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata


def installed_version(dist: str) -> str | None:
    """The version of distribution `dist` as installed in this interpreter, None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def installed_versions(dists: Iterable[str]) -> dict[str, str | None]:
    """`installed_version` of each distribution, in the order given."""
    return {dist: installed_version(dist) for dist in dists}
