"""Inputs and figures for the seed-002 GPU run (scripts/gpu_seed002.sh): no hub, so everything is built locally.

Not part of CI. Sub-commands:

    python scripts/gpu_seed002_prep.py tokenizer OUT        (here: lfw.tiny's byte-level BPE tokenizer)
    python scripts/gpu_seed002_prep.py model OUT --tokenizer DIR   (on the GPU: random-init Qwen3-14B)
    python scripts/gpu_seed002_prep.py data OUT.json [--rows 200] [--words 1400]
    python scripts/gpu_seed002_prep.py summary RUN_DIR SMI_CSV TORCH_DIR --plan PLAN_TXT [--skip 5]

The model has Qwen3-14B's exact shape (hidden 5120, 40 layers, 40/8 heads x 128, ffn 17408, vocab 151,936,
untied) with random weights: memory and speed do not depend on the values. The tokenizer has only 1,536
tokens, so most embedding rows are never looked up; the matrices still have their full size. The data rows
are longer than cutoff_len 2048 on both turns, so LLaMA-Factory truncates every sample to the cutoff and each
micro batch holds exactly the tokens the planner assumes (micro batch x cutoff).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "wrapper"))

# Qwen3-14B's config.json (hub), minus the weights.
QWEN3_14B = dict(
    vocab_size=151936,
    hidden_size=5120,
    intermediate_size=17408,
    num_hidden_layers=40,
    num_attention_heads=40,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    max_window_layers=40,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    tie_word_embeddings=False,
)


def build_tokenizer(out: Path) -> None:
    """lfw.tiny's tokenizer, with Qwen3's context length instead of the tiny model's 2048."""
    from lfw.tiny import build_tiny_tokenizer

    build_tiny_tokenizer(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = QWEN3_14B["max_position_embeddings"]
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")


def build_model(out: Path, tokenizer: Path) -> None:
    """Initialise the 14B model directly on the GPU in bf16 (seconds) and save it as safetensors shards."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    pad, eos = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(**QWEN3_14B, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad, dtype="bfloat16")
    start = time.time()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: an fp32 init would need 59 GB first
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).eval()
    params = sum(p.numel() for p in model.parameters())
    torch.cuda.synchronize()
    print(f"model: {params / 1e9:.3f}B params initialised on the GPU in {time.time() - start:.1f} s", flush=True)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    start = time.time()
    model.save_pretrained(str(out), max_shard_size="4GB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer / name, out / name)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**30
    print(f"model: saved {size:.1f} GiB to {out} in {time.time() - start:.1f} s", flush=True)


def build_data(out: Path, rows: int, words: int) -> None:
    """sharegpt rows whose human and gpt turns each run past half the cutoff (words of lfw.tiny's corpus)."""
    from lfw.tiny import _EN_WORDS

    vocab = _EN_WORDS.split()
    rng = random.Random(0)

    def text() -> str:
        return " ".join(rng.choice(vocab) for _ in range(words)) + "."

    data = [
        {"conversations": [{"from": "human", "value": text()}, {"from": "gpt", "value": text()}]} for _ in range(rows)
    ]
    out.write_text(json.dumps(data) + "\n")
    print(f"data: {rows} sharegpt rows of 2 x {words} words -> {out}", flush=True)


def _smi_peak(smi_csv: Path) -> tuple[float, int]:
    """Peak memory.used (MiB) in an nvidia-smi CSV sampled with -lms, and the number of samples."""
    used = []
    for line in smi_csv.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[-1].replace(".", "").isdigit():
            used.append(float(parts[-1]))
    return (max(used) if used else 0.0), len(used)


def _seconds(elapsed: str) -> int:
    """LLaMA-Factory's elapsed_time, str(timedelta) of whole seconds ("0:01:23" or "1 day, 0:00:05")."""
    days, _, clock = elapsed.rpartition(", ")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days.split()[0]) * 86400 if days else 0) + h * 3600 + m * 60 + s


def _steady(trainer_log: Path, skip: int) -> dict:
    """Tokens/s and s/step between step `skip` and the last logged step (trainer_log.jsonl's elapsed_time)."""
    rows = [json.loads(line) for line in trainer_log.read_text().splitlines() if line.strip()]
    rows = [r | {"elapsed_s": _seconds(r["elapsed_time"])} for r in rows if "loss" in r and "current_steps" in r]
    first = next((r for r in rows if r["current_steps"] >= skip), None)
    last = rows[-1] if rows else None
    out = {"logged_steps": len(rows), "last_step": last["current_steps"] if last else None}
    if first and last and last["current_steps"] > first["current_steps"]:
        dt = last["elapsed_s"] - first["elapsed_s"]
        steps = last["current_steps"] - first["current_steps"]
        out |= {"steady_from": first["current_steps"], "steady_s_per_step": dt / steps if steps else None}
        if "total_tokens" in last and "total_tokens" in first:
            out["steady_tokens_per_s"] = (last["total_tokens"] - first["total_tokens"]) / dt if dt else None
    out["losses"] = [round(r["loss"], 4) for r in rows]
    out["vram_reserved_gib"] = [r.get("vram_reserved") for r in rows]  # LF's RECORD_VRAM: max_memory_reserved
    return out


def _plan_figures(plan_txt: Path) -> dict:
    """The first `lfw plan` table's peak (nvidia-smi-like: reserved + CUDA context) split into its parts."""
    from lfw.preflight.memory.planner import CUDA_CONTEXT_BYTES, GIB

    text = plan_txt.read_text()

    def row(name: str) -> float:
        match = re.search(rf"{name}[^0-9]*([0-9.]+)", text)
        if match is None:
            raise SystemExit(f"{plan_txt}: no '{name}' row")
        return float(match.group(1))

    total, slack, context = row("peak per GPU"), row("allocator slack"), CUDA_CONTEXT_BYTES / GIB
    return {
        "total": total,
        "context": round(context, 2),
        "reserved": total - context,
        "allocated": total - context - slack,
    }


def _pct(plan: float, measured: float) -> float:
    return round(100 * (plan - measured) / measured, 1)


def summary(run_dir: Path, smi_csv: Path, torch_dir: Path, plan_txt: Path, skip: int) -> dict:
    """The figures of the run: nvidia-smi and torch peaks, steady throughput, each against its part of the plan."""
    logs = sorted(run_dir.rglob("trainer_log.jsonl"))
    smi_mib, samples = _smi_peak(smi_csv) if smi_csv.exists() else (0.0, 0)
    peaks = [json.loads(p.read_text()) for p in sorted(torch_dir.glob("peak-*.json"))]
    peaks = [p for p in peaks if p.get("max_reserved", 0) > 0]
    plan = _plan_figures(plan_txt)
    result = {
        "nvidia_smi_peak_mib": smi_mib,
        "nvidia_smi_peak_gib": round(smi_mib / 1024, 2),
        "nvidia_smi_samples": samples,
        "torch_peaks": peaks,
        "plan_gib": {k: round(v, 2) for k, v in plan.items()},
        "train": _steady(logs[0], skip) if logs else None,
    }
    if smi_mib:
        result["plan_total_vs_smi_pct"] = _pct(plan["total"], smi_mib / 1024)
    if peaks:
        reserved = max(p["max_reserved"] for p in peaks) / 2**30
        allocated = max(p["max_allocated"] for p in peaks) / 2**30
        result |= {
            "torch_max_reserved_gib": round(reserved, 2),
            "torch_max_allocated_gib": round(allocated, 2),
            "plan_reserved_vs_torch_pct": _pct(plan["reserved"], reserved),
            "plan_allocated_vs_torch_pct": _pct(plan["allocated"], allocated),
        }
        if smi_mib:
            result["outside_allocator_gib"] = round(smi_mib / 1024 - reserved, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tokenizer").add_argument("out", type=Path)
    model = sub.add_parser("model")
    model.add_argument("out", type=Path)
    model.add_argument("--tokenizer", type=Path, required=True)
    data = sub.add_parser("data")
    data.add_argument("out", type=Path)
    data.add_argument("--rows", type=int, default=200)
    data.add_argument("--words", type=int, default=1400)
    summ = sub.add_parser("summary")
    summ.add_argument("run_dir", type=Path)
    summ.add_argument("smi_csv", type=Path)
    summ.add_argument("torch_dir", type=Path)
    summ.add_argument("--plan", type=Path, required=True, help="lfw plan output (first table used)")
    summ.add_argument("--skip", type=int, default=5)
    args = parser.parse_args(argv)
    if args.cmd == "tokenizer":
        build_tokenizer(args.out)
    elif args.cmd == "model":
        build_model(args.out, args.tokenizer)
    elif args.cmd == "data":
        build_data(args.out, args.rows, args.words)
    else:
        print(json.dumps(summary(args.run_dir, args.smi_csv, args.torch_dir, args.plan, args.skip), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
