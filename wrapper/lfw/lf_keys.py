"""The argument names the installed LLaMA-Factory accepts, without importing it into lfw's process.

LLaMA-Factory's parser (HfArgumentParser over its dataclasses, including transformers' TrainingArguments)
is the judge of a train YAML, and the accepted keys change with both versions (transformers 5.17 dropped
`warmup_ratio`). Importing it costs seconds and pulls in torch, so the key list is read once in a
subprocess and cached per (llamafactory, transformers) version pair; snapshots for known pairs ship with lfw.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata, resources
from importlib.util import find_spec
from pathlib import Path

from lfw.errors import UserError

# Keys never accepted in a recipe: secrets belong in the environment, not in files that get shared.
SECRET_KEYS = {
    "swanlab_api_key": "export SWANLAB_API_KEY instead",
    "hf_hub_token": "export HF_TOKEN instead",
    "ms_hub_token": "export MODELSCOPE_API_TOKEN instead",
    "om_hub_token": "export the token in the environment instead",
}

_DUMP_SCRIPT = """
import dataclasses, json, sys
import llamafactory.hparams as hp
import transformers, llamafactory
keys = set()
for name in dir(hp):
    cls = getattr(hp, name)
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and name.endswith("Arguments"):
        keys.update(f.name for f in dataclasses.fields(cls) if f.init)
json.dump({"llamafactory": llamafactory.__version__, "transformers": transformers.__version__,
           "keys": sorted(keys)}, sys.stdout)
"""


@dataclass(frozen=True)
class KeySet:
    """Accepted LLaMA-Factory keys and where the list came from (shown in rendered headers)."""

    keys: frozenset[str]
    llamafactory: str
    transformers: str
    source: str

    def __contains__(self, key: object) -> bool:
        return key in self.keys


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cache_dir() -> Path:
    root = os.environ.get("LFW_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lfw"
    return Path(root)


def _snapshot_name(lf_version: str, tf_version: str) -> str:
    return f"llamafactory-{lf_version}+transformers-{tf_version}.json"


def _bundled_dir() -> Path:
    return Path(str(resources.files("lfw") / "lf_keys"))


def _read(path: Path, source: str) -> KeySet:
    data = json.loads(path.read_text())
    return KeySet(frozenset(data["keys"]), data["llamafactory"], data["transformers"], source)


def dump_installed_keys(python: str = sys.executable) -> dict:
    """Ask an interpreter with LLaMA-Factory installed for its argument names (seconds: imports torch)."""
    proc = subprocess.run([python, "-c", _DUMP_SCRIPT], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"could not read LLaMA-Factory's arguments with {python}: {tail[0]}")
    return json.loads(proc.stdout)


_CACHE: dict[tuple, KeySet] = {}


def known_keys() -> KeySet:
    """The keys of the installed LLaMA-Factory; a bundled snapshot when it is not installed here."""
    lf_version, tf_version = _version("llamafactory"), _version("transformers")
    memo = (lf_version, tf_version)
    if memo in _CACHE:
        return _CACHE[memo]
    if lf_version is None or tf_version is None or find_spec("llamafactory") is None:
        snapshots = sorted(_bundled_dir().glob("*.json"))
        result = _read(snapshots[-1], f"bundled snapshot {snapshots[-1].stem} (LLaMA-Factory is not installed here)")
    else:
        name = _snapshot_name(lf_version, tf_version)
        bundled, cached = _bundled_dir() / name, cache_dir() / "lf_keys" / name
        if bundled.is_file():
            result = _read(bundled, f"bundled snapshot {bundled.stem}")
        elif cached.is_file():
            result = _read(cached, f"cache {cached}")
        else:
            data = dump_installed_keys()
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(data, indent=1) + "\n")
            result = _read(cached, f"read from the installed LLaMA-Factory into {cached}")
    _CACHE[memo] = result
    return result


def check_passthrough(raw: dict) -> list[tuple[str, str, str]]:
    """(key, message, fix) for every passthrough key that is a secret or unknown to LLaMA-Factory."""
    found = []
    keys = known_keys() if raw else None
    for key in raw:
        if key in SECRET_KEYS:
            found.append((key, "secrets are never written into recipes or rendered files", SECRET_KEYS[key]))
        elif keys is not None and key not in keys:
            close = difflib.get_close_matches(key, sorted(keys.keys), n=1)
            fix = f"did you mean {close[0]!r}?" if close else "see `lfw lf train --help` for valid keys"
            found.append((key, f"not an argument of LLaMA-Factory {keys.llamafactory}", fix))
    return found
