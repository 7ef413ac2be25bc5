"""Plan against reality: measure peak GPU memory of short training runs and compare with `lfw plan`.

Not part of CI: it needs a CUDA GPU, torch, transformers, peft (and bitsandbytes / liger-kernel wheels for
QLoRA and the liger rows). Three sub-commands:

    python scripts/bench_plan_vs_gpu.py measure --out results.jsonl [--budget 420]
        [--grid full|verify|independent] [--gpu-mem GiB] [--models 0.6B 4B] [--methods lora qlora full]
    python scripts/bench_plan_vs_gpu.py report results.jsonl [--doc docs/plan_vs_gpu.md | --append TITLE]
    python scripts/bench_plan_vs_gpu.py worker SPEC_JSON        (internal: one model/method/liger group)

`measure` builds Qwen3-0.6B and Qwen3-4B architectures with random weights (no hub; memory does not depend
on the values), saves them once, and runs each (model, method, liger) group in its own process, because the
liger kernel patches transformers' classes globally. Each configuration trains 3 steps in a loop that mirrors
LLaMA-Factory 0.9.5 (bf16 autocast, trainable parameters cast to fp32, fused AdamW, gradient clipping,
re-entrant gradient checkpointing, outputs dropped before backward as the HF Trainer does) and records
torch.cuda.max_memory_allocated / max_memory_reserved. The `verify` grid runs the micro batch the planner
picks for the whole card, to check that it does not run out of memory. The `independent` grid checks the
calibrated planner on data it was not fitted on: the planner's pick at cutoff 1024 and 2048 for every
(model, method, liger) group, plus held-out shapes (cutoff 768/1536, micro 2/6, the unmeasured 4B QLoRA+liger
and full rows). `report` recomputes the predictions with the current planner (so a calibration needs no new
GPU time) and writes the markdown table, or appends it as a dated section with `--append`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "wrapper"))

from lfw.preflight.memory.planner import GIB, PlanInput, choose_micro_batch, estimate  # noqa: E402
from lfw.preflight.memory.shapes import PRESETS  # noqa: E402  (pure: no torch)

MODELS = {"0.6B": "qwen3-0.6b", "4B": "qwen3-4b"}
METHODS = ("lora", "qlora", "full")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GLOBAL_BATCH = 256
# Held-out shapes (micro, cutoff, gradient checkpointing) of the `independent` grid: none was used for the
# calibration (which saw cutoff 512/1024, micro 1/4 and no 4B QLoRA+liger or 4B full rows).
HELD_OUT = {
    ("0.6B", "lora", False): [(2, 1536, True), (6, 768, False)],
    ("0.6B", "lora", True): [(6, 1536, True), (2, 768, False)],
    ("0.6B", "qlora", False): [(6, 768, True), (2, 1536, False)],
    ("0.6B", "qlora", True): [(2, 1536, True), (6, 768, False)],
    ("0.6B", "full", False): [(2, 1536, True), (6, 768, True)],
    ("0.6B", "full", True): [(6, 1536, True), (2, 768, False)],
    ("4B", "lora", False): [(2, 1536, True), (6, 768, True)],
    ("4B", "lora", True): [(6, 1536, True), (2, 768, False)],
    ("4B", "qlora", False): [(6, 768, True), (2, 1536, True)],
    ("4B", "qlora", True): [(1, 1024, True), (6, 1536, True), (4, 1024, False)],
    ("4B", "full", False): [(1, 1024, True), (2, 1536, True)],
    ("4B", "full", True): [(6, 768, True), (2, 1536, True)],
}


def plan_for(cfg: dict) -> PlanInput:
    return PlanInput(
        arch=PRESETS[MODELS[cfg["model"]]],
        method=cfg["method"],
        lora_rank=8,
        quant_bits=4 if cfg["method"] == "qlora" else None,
        micro_batch=cfg["micro"],
        cutoff_len=cfg["cutoff"],
        gradient_checkpointing=cfg["gc"],
        liger=cfg["liger"],
    )


def grid(kind: str, gpu_bytes: float) -> list[dict]:
    """Groups of configurations; each group shares one loaded model (one process)."""
    groups = []
    shapes = [(1, 512, True), (1, 1024, True), (4, 512, True), (4, 1024, True), (4, 1024, False)]
    for model in ("0.6B", "4B"):
        for method in METHODS:
            for liger in (False, True):
                if kind == "verify":
                    # The planner's own pick for the whole card (global batch 256) at cutoff 1024.
                    configs = planner_picks(model, method, liger, (1024,), gpu_bytes)
                    if not configs:
                        continue
                elif kind == "independent":
                    held = [
                        {"model": model, "method": method, "liger": liger, "micro": m, "cutoff": c, "gc": g}
                        for m, c, g in HELD_OUT[(model, method, liger)]
                    ]
                    # Smallest first, so that the large picks cannot fragment the small rows' reserve.
                    configs = sorted(
                        held + planner_picks(model, method, liger, (1024, 2048), gpu_bytes),
                        key=lambda cfg: estimate(plan_for(cfg)).reserved,
                    )
                elif model == "4B" and method == "full":
                    configs = [
                        {
                            "model": model,
                            "method": method,
                            "liger": liger,
                            "micro": m,
                            "cutoff": c,
                            "gc": True,
                        }
                        for m, c in ((1, 512), (1, 1024))
                    ]
                else:
                    configs = [
                        {"model": model, "method": method, "liger": liger, "micro": m, "cutoff": c, "gc": g}
                        for m, c, g in shapes
                    ]
                groups.append({"model": model, "method": method, "liger": liger, "configs": configs})
    return groups


def planner_picks(model: str, method: str, liger: bool, cutoffs: tuple[int, ...], gpu_bytes: float) -> list[dict]:
    """The micro batch `lfw plan` picks for the whole card (global batch 256, gradient checkpointing)."""
    picks = []
    for cutoff in cutoffs:
        base = {"model": model, "method": method, "liger": liger, "cutoff": cutoff, "gc": True}
        choice = choose_micro_batch(plan_for({**base, "micro": 1}), GLOBAL_BATCH, gpu_bytes)
        if choice.micro_batch is not None:
            picks.append({**base, "micro": choice.micro_batch, "chosen": True, "plan_gib": gpu_bytes / GIB})
    return picks


def build_models(root: Path, names: tuple[str, ...] = tuple(MODELS)) -> None:
    """Random-weight Qwen3 checkpoints with the public architectures (saved so QLoRA can quantize on load)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    for name in names:
        key = MODELS[name]
        path = root / name
        if (path / "config.json").is_file():
            continue
        arch = PRESETS[key]
        cfg = Qwen3Config(
            hidden_size=arch.hidden,
            num_hidden_layers=arch.layers,
            num_attention_heads=arch.heads,
            num_key_value_heads=arch.kv_heads,
            head_dim=arch.head_dim,
            intermediate_size=arch.intermediate,
            vocab_size=arch.vocab,
            tie_word_embeddings=arch.tied_embeddings,
            max_position_embeddings=40960,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
        )
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        model.save_pretrained(path)
        del model
        torch.cuda.empty_cache()


def load_model(spec: dict):
    """The model as LLaMA-Factory would build it: liger patches, 4-bit base for QLoRA, LoRA, fp32 trainables."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if spec["liger"]:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen3

        apply_liger_kernel_to_qwen3(
            rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=True
        )
    quant = None
    if spec["method"] == "qlora":
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(
        spec["path"],
        dtype=torch.bfloat16,
        quantization_config=quant,
        device_map={"": 0},
        attn_implementation="sdpa",
    )
    model.config.use_cache = False
    core = model
    if spec["method"] in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"),
        )
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.float32)  # LLaMA-Factory: cast_trainable_params_to_fp32
    return model, core


def worker(spec: dict) -> None:
    """Load one model as LLaMA-Factory would, then run each configuration for 3 steps; print JSON lines."""
    import gc

    import torch

    model, core = load_model(spec)
    params = [p for p in model.parameters() if p.requires_grad]
    vocab = core.config.vocab_size
    for cfg in spec["configs"]:
        if cfg["gc"]:
            core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            core.enable_input_require_grads()
        else:
            core.gradient_checkpointing_disable()
        model.train()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result = dict(cfg)
        start = time.time()
        optimizer = None
        try:
            optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
            for _ in range(3):
                ids = torch.randint(0, vocab, (cfg["micro"], cfg["cutoff"]), device="cuda")
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                del loss, ids
            torch.cuda.synchronize()
            result["oom"] = False
        except torch.OutOfMemoryError:
            result["oom"] = True
        free, total = torch.cuda.mem_get_info()
        result.update(
            allocated=torch.cuda.max_memory_allocated(),
            reserved=torch.cuda.max_memory_reserved(),
            process_total=total - free,
            gpu_total=total,
            seconds=round(time.time() - start, 1),
            device=torch.cuda.get_device_name(),
        )
        print("RESULT " + json.dumps(result), flush=True)
        del optimizer
        for param in params:
            param.grad = None


def measure(
    out: Path,
    budget: float,
    kind: str,
    gpu_gib: float | None = None,
    models: tuple[str, ...] = tuple(MODELS),
    methods: tuple[str, ...] = METHODS,
) -> None:
    import torch

    started = time.time()
    root = Path(os.environ.get("BENCH_MODELS", "/tmp/bench_models"))
    build_models(root, models)
    gpu_bytes = gpu_gib * GIB if gpu_gib else torch.cuda.get_device_properties(0).total_memory
    print(f"models ready after {time.time() - started:.0f}s", flush=True)
    with out.open("a") as sink:
        for group in (g for g in grid(kind, gpu_bytes) if g["model"] in models and g["method"] in methods):
            left = budget - (time.time() - started)
            if left < 30:
                print(f"budget spent; skipping {group['model']} {group['method']} liger={group['liger']}")
                continue
            spec = {**group, "path": str(root / group["model"])}
            try:
                proc = subprocess.run(
                    [sys.executable, __file__, "worker", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    timeout=left - 10,
                )
                text = proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as err:
                text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            for line in text.splitlines():
                if line.startswith("RESULT "):
                    sink.write(line[7:] + "\n")
                    sink.flush()
                    row = json.loads(line[7:])
                    print(
                        f"{row['model']} {row['method']} liger={row['liger']} micro={row['micro']} "
                        f"cutoff={row['cutoff']} gc={row['gc']}: alloc {row['allocated'] / GIB:.2f} "
                        f"res {row['reserved'] / GIB:.2f} GiB oom={row['oom']} {row['seconds']}s",
                        flush=True,
                    )
            if "RESULT " not in text:
                print(text[-3000:], flush=True)


def report(results: Path, doc: Path | None, append: str | None = None) -> str:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    device = rows[0]["device"] if rows else "?"
    lines = [
        "| model | method | liger | micro | cutoff | grad ckpt | predicted alloc GiB | measured alloc GiB | "
        "error % | predicted reserved GiB | measured reserved GiB | error % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    errors = []  # (|allocated error| %, |reserved error| %, planner's pick) of the rows that ran
    for row in rows:
        est = estimate(plan_for(row))
        if row["oom"]:
            lines.append(
                f"| {row['model']} | {row['method']} | {row['liger']} | {row['micro']} | {row['cutoff']} | "
                f"{row['gc']} | {est.allocated / GIB:.2f} | OOM | | {est.reserved / GIB:.2f} | OOM | |"
            )
            continue
        err_a = 100 * (est.allocated - row["allocated"]) / row["allocated"]
        err_r = 100 * (est.reserved - row["reserved"]) / row["reserved"]
        errors.append((abs(err_a), abs(err_r), bool(row.get("chosen"))))
        chosen = " (planner's pick)" if row.get("chosen") else ""
        lines.append(
            f"| {row['model']} | {row['method']} | {row['liger']} | {row['micro']}{chosen} | "
            f"{row['cutoff']} | "
            f"{row['gc']} | {est.allocated / GIB:.2f} | {row['allocated'] / GIB:.2f} | {err_a:+.1f} | "
            f"{est.reserved / GIB:.2f} | {row['reserved'] / GIB:.2f} | {err_r:+.1f} |"
        )
    within = sum(1 for _, r, _ in errors if r <= 10)
    ooms = [row for row in rows if row["oom"]]
    summary = (
        f"{len(rows)} configurations on {device}; reserved within 10%: {within}/{len(errors)}; "
        f"max |error| allocated {max((a for a, _, _ in errors), default=0):.1f}%, "
        f"reserved {max((r for _, r, _ in errors), default=0):.1f}%; out of memory: {len(ooms)}"
    )
    n_picks = sum(1 for row in rows if row.get("chosen"))
    if n_picks and n_picks < len(rows):
        picks = [r for _, r, chosen in errors if chosen]
        held = [r for _, r, chosen in errors if not chosen]
        summary += (
            f" (planner's picks: {n_picks}, {sum(1 for row in ooms if row.get('chosen'))} out of memory, "
            f"reserved within 10%: {sum(1 for r in picks if r <= 10)}/{len(picks)}; held-out shapes: "
            f"reserved within 10%: {sum(1 for r in held if r <= 10)}/{len(held)})"
        )
    table = "\n".join(lines)
    if append is not None and doc is not None:
        with doc.open("a") as sink:
            sink.write(f"\n## {append}\n\n{summary}\n\n{table}\n")
    elif doc is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(
            f"<!-- generated by scripts/bench_plan_vs_gpu.py report on {_dt.date.today()} -->\n{summary}\n\n{table}\n"
        )
    print(summary)
    print(table)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--budget", type=float, default=420.0, help="seconds for the whole grid")
    m.add_argument("--grid", choices=("full", "verify", "independent"), default="full")
    m.add_argument("--gpu-mem", type=float, default=None, help="GiB the picks plan for (default: the card)")
    m.add_argument("--models", nargs="+", choices=tuple(MODELS), default=tuple(MODELS))
    m.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    r = sub.add_parser("report")
    r.add_argument("results", type=Path)
    r.add_argument("--doc", type=Path, default=None)
    r.add_argument("--append", default=None, help="append to --doc as a section with this title")
    w = sub.add_parser("worker")
    w.add_argument("spec")
    args = parser.parse_args()
    if args.cmd == "measure":
        measure(args.out, args.budget, args.grid, args.gpu_mem, tuple(args.models), tuple(args.methods))
    elif args.cmd == "report":
        report(args.results, args.doc, args.append)
    else:
        worker(json.loads(args.spec))


if __name__ == "__main__":
    main()
