"""Which GPUs this machine has, read from CUDA_VISIBLE_DEVICES and nvidia-smi, never from torch.

Importing torch to count GPUs costs seconds; nvidia-smi answers in milliseconds and also gives names,
memory and compute capability (bf16 needs compute capability 8.0, Ampere or newer).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass

# GPUs older than Ampere, for drivers too old to report compute_cap (seed 002 ran on T10s).
_NO_BF16_NAMES = ("V100", "T4", "T10", "P100", "P40", "P4", "K80", "M60", "RTX 20", "TITAN V", "QUADRO RTX")


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_mib: int
    compute_capability: float | None

    @property
    def bf16(self) -> bool:
        if self.compute_capability is not None:
            return self.compute_capability >= 8.0
        return not any(tag in self.name.upper() for tag in _NO_BF16_NAMES)

    def describe(self) -> str:
        return f"{self.index}: {self.name}, {self.memory_mib / 1024:.0f} GiB, bf16 {'yes' if self.bf16 else 'no'}"

    def as_dict(self) -> dict:
        return {**asdict(self), "bf16": self.bf16}


def _query(fields: str) -> list[list[str]] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return [[cell.strip() for cell in line.split(",")] for line in proc.stdout.splitlines() if line.strip()]


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def query_nvidia_smi() -> list[GPU]:
    """All GPUs nvidia-smi sees (physical indices); empty when there is no driver."""
    rows = _query("index,name,memory.total,compute_cap")
    if rows is None:  # old drivers do not know compute_cap
        rows = [[*row, ""] for row in (_query("index,name,memory.total") or [])]
    gpus = []
    for row in rows:
        if len(row) < 4 or not row[0].isdigit():
            continue
        memory = _parse_float(row[2])
        gpus.append(GPU(int(row[0]), row[1], int(memory or 0), _parse_float(row[3])))
    return gpus


def driver_version() -> str | None:
    """The NVIDIA driver version, or None without nvidia-smi or a working driver."""
    rows = _query("driver_version")
    return rows[0][0] if rows and rows[0] else None


def visible_gpus(env: Mapping[str, str] | None = None) -> list[GPU]:
    """The GPUs a process would see, honouring CUDA_VISIBLE_DEVICES ("" or -1 hides all)."""
    env = os.environ if env is None else env
    mask = env.get("CUDA_VISIBLE_DEVICES")
    if mask is not None and mask.strip() in ("", "-1"):
        return []
    gpus = query_nvidia_smi()
    if mask is None:
        return gpus
    by_index = {gpu.index: gpu for gpu in gpus}
    chosen: list[GPU] = []
    for token in mask.split(","):
        token = token.strip()
        if not token.isdigit():  # UUIDs or MIG names: keep order, details unknown
            chosen.append(GPU(len(chosen), token, 0, None))
        elif int(token) in by_index:
            chosen.append(by_index[int(token)])
        else:
            break  # CUDA stops at the first invalid ordinal
    return chosen
