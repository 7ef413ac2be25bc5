"""Figures of the GPU benchmark (scripts/bench/gpu_bench.sh) from each run's files: steady tokens/s, MFU, peak
memory, loss curve. Pure Python (matplotlib only for the optional plot); runs there and here.

    python scripts/bench/summary.py RESULTS_DIR RUNS_JSON [--peak-tflops 790] [--png losses.png]

RESULTS_DIR/<run>/ holds trainer_log.jsonl, smi.csv (nvidia-smi timestamp, memory.used MiB, utilization %),
probe/tokens-*.csv (scripts/bench/site) and rc. Writes RESULTS_DIR/summary.json and prints a markdown table.

Steady tokens/s: LLaMA-Factory's trainer_log.jsonl logs, at every step, total_tokens (transformers'
num_input_tokens_seen = input_ids.numel(), padding included) and throughput = total_tokens / seconds since the
start of training, so t = total_tokens / throughput has sub-second resolution; steady = (tokens_b - tokens_a) /
(t_b - t_a) from step `skip` to the last step. Real tokens/s multiply that by the probe's non-pad share.

Model FLOPs per real token (no recomputation counted; attention counted per sample, causal):
  full:        6 * N + 6 * L * H * D * S
  lora/qlora:  4 * N + 6 * N_lora + 6 * L * H * D * S    (frozen weights get no weight gradient)
N = weights in matrix multiplications (q, k, v, o, gate, up, down of every layer and the LM head; the embedding
lookup is free), L layers, H query heads of D dims, S = sum(l^2) / sum(l) over the samples (the token-weighted
mean sample length). MFU = FLOPs per token * real tokens/s / peak.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

LORA_RANK = 8  # lfw's default and LLaMA-Factory's example, on all seven linear layers


def matmul_params(cfg: dict) -> tuple[int, int]:
    """(weights in matmuls incl. the LM head, LoRA r8 parameters on all linear layers) of a Qwen3 config.json."""
    d, ff, heads, kv, hd = (
        cfg[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")
    )
    shapes = [(d, heads * hd), (d, kv * hd), (d, kv * hd), (heads * hd, d), (d, ff), (d, ff), (ff, d)]
    layer = sum(a * b for a, b in shapes)
    lora = sum(LORA_RANK * (a + b) for a, b in shapes)
    layers = cfg["num_hidden_layers"]
    return layers * layer + cfg["vocab_size"] * d, layers * lora


def flops_per_token(cfg: dict, method: str, mean_len: float) -> float:
    n, n_lora = matmul_params(cfg)
    attention = 6 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * cfg["head_dim"] * mean_len
    return (6 * n if method == "full" else 4 * n + 6 * n_lora) + attention


def log_rows(trainer_log: Path) -> list[dict]:
    rows = [json.loads(line) for line in trainer_log.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r and "current_steps" in r]


def steady(rows: list[dict], skip: int) -> dict:
    """Tokens/s between the first step >= skip and the last, from total_tokens and throughput."""
    timed = [r for r in rows if r.get("throughput") and r.get("total_tokens")]
    first = next((r for r in timed if r["current_steps"] >= skip), None)
    if not timed or first is None or timed[-1]["current_steps"] <= first["current_steps"]:
        return {}
    last = timed[-1]
    t0, t1 = first["total_tokens"] / first["throughput"], last["total_tokens"] / last["throughput"]
    steps = last["current_steps"] - first["current_steps"]
    return {
        "from_step": first["current_steps"],
        "to_step": last["current_steps"],
        "tokens_per_s": (last["total_tokens"] - first["total_tokens"]) / (t1 - t0),
        "s_per_step": (t1 - t0) / steps,
        "tokens_per_step": (last["total_tokens"] - first["total_tokens"]) / steps,
        "first_step_s": round(timed[0]["total_tokens"] / timed[0]["throughput"], 2),
    }


def probe_share(probe: Path) -> dict:
    numel = nonpad = supervised = batches = 0
    for path in probe.glob("tokens-*.csv"):
        for line in path.read_text().splitlines():
            a, b, c = (int(x) for x in line.split(","))
            numel, nonpad, supervised, batches = numel + a, nonpad + b, supervised + c, batches + 1
    if not numel:
        return {}
    return {"batches": batches, "nonpad_share": nonpad / numel, "supervised_share": supervised / numel}


def smi(smi_csv: Path) -> dict:
    used, util = [], []
    if smi_csv.exists():
        for row in csv.reader(smi_csv.read_text().splitlines()):
            try:
                used.append(float(row[1]))
                util.append(float(row[2]))
            except (IndexError, ValueError):
                continue
    if not used:
        return {}
    return {"peak_mib": max(used), "samples": len(used), "mean_util_pct": round(sum(util) / len(util), 1)}


def one_run(run: dict, results: Path, stats: dict, peak_tflops: float, skip: int) -> dict:
    folder = results / run["name"]
    rc = (folder / "rc").read_text().strip() if (folder / "rc").exists() else "not run"
    out = {k: run[k] for k in ("name", "source", "method", "shape", "steps")} | {"rc": rc}
    log = folder / "trainer_log.jsonl"
    rows = log_rows(log) if log.exists() else []
    out["losses"] = [[r["current_steps"], round(r["loss"], 4), r.get("total_tokens")] for r in rows]
    out |= steady(rows, min(skip, max(2, run["steps"] // 4))) | probe_share(folder / "probe") | smi(folder / "smi.csv")
    config = json.loads((Path(run["config"]).parents[2] / "m" / run["shape"] / "config.json").read_text())
    if "tokens_per_s" in out:
        out["real_tokens_per_s"] = out["tokens_per_s"] * out.get("nonpad_share", 1.0)
        out["flops_per_token"] = flops_per_token(config, run["method"], stats["len2_over_len"])
        out["mfu"] = out["flops_per_token"] * out["real_tokens_per_s"] / (peak_tflops * 1e12)
    if (folder / "wall_s").exists():
        out["wall_s"] = int((folder / "wall_s").read_text())
    return out


def table(figures: list[dict]) -> str:
    names = ["run", "rc", "steady tokens/s (all)", "real tokens/s", "s/step", "tokens/step", "MFU", "peak MiB"]
    names += ["mean util % (whole run)", "loss first->last"]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for f in figures:
        loss = f"{f['losses'][0][1]} -> {f['losses'][-1][1]}" if f["losses"] else ""
        cells = [
            f["name"],
            f["rc"],
            f"{f['tokens_per_s']:,.0f}" if "tokens_per_s" in f else "",
            f"{f['real_tokens_per_s']:,.0f}" if "real_tokens_per_s" in f else "",
            f"{f['s_per_step']:.3f}" if "s_per_step" in f else "",
            f"{f['tokens_per_step']:,.0f}" if "tokens_per_step" in f else "",
            f"{100 * f['mfu']:.1f}%" if "mfu" in f else "",
            f"{f['peak_mib']:,.0f}" if "peak_mib" in f else "",
            str(f.get("mean_util_pct", "")),
            loss,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(figures: list[dict], png: Path) -> None:
    """Loss against tokens seen, one line per run (skipped where matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(9, 5))
    for f in figures:
        points = [(t, loss) for _, loss, t in f["losses"] if t]
        if points:
            tokens, losses = zip(*points, strict=True)
            ax.plot(tokens, losses, label=f["name"], marker=".")
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen (incl. padding)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    fig.savefig(png, dpi=110, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--skip", type=int, default=5, help="steady window starts at this step (at most)")
    parser.add_argument("--png", type=Path)
    args = parser.parse_args(argv)
    spec = json.loads(args.runs.read_text())
    stats = json.loads((Path(spec["root"]) / "data" / "alpaca.stats.json").read_text())
    figures = [one_run(r, args.results, stats, args.peak_tflops, args.skip) for r in spec["runs"]]
    (args.results / "summary.json").write_text(json.dumps({"data": stats, "runs": figures}, indent=2) + "\n")
    if args.png:
        plot(figures, args.png)
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
