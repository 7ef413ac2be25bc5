"""Write every configuration of the GPU benchmark here, on the CPU machine: LLaMA-Factory's own YAMLs and lfw's
bare recipes rendered by `lfw render`, so the device runs `llamafactory-cli train` on finished files only.

Not part of CI. Usage (from the repository root, after scripts/bench/prep.py built .bench/{tok,data,models}):

    .venv/bin/python scripts/bench/configs.py [--smoke] [--render-arg=--gpus=1 ...]

Everything lives under one root (/tmp/lfwbench, or /tmp/lfwbench-smoke with --smoke) that is the same path here
and on the device: `lfw render` writes absolute paths. The finished tree is copied to .bench/root, which
the device call carries; gpu_bench.sh copies it back to the same root there (the smoke test uses its root here).

Runs, in the order the device runs them (most needed first, so a short budget drops the least needed):
- `hand_full_*`: the best hand-tuned LLaMA-Factory configuration of issue 11 (full, packing, liger kernel, no
  gradient checkpointing, micro batch 16, cutoff 1024, 2 data-loader workers) with lfw's learning rate.
- `lf_{lora,qlora,full}_*`: LLaMA-Factory 0.9.5's examples (train_lora/qwen3_lora_sft.yaml,
  train_qlora/qwen3_lora_sft_otfq.yaml, train_full/qwen3_full_sft.yaml with its ds_z3_config.json), changed
  only in model, data, output folder, max_steps, logging_steps 1 and include_num_input_tokens_seen.
- `lfw_{lora,qlora,full}_*`: a bare lfw recipe (model, data, max_steps; method.type for qlora/full; lfw's
  default is LoRA) plus logging_steps 1 and include_num_input_tokens_seen, rendered by `lfw render --gpus 1`
  with DEVICE_ENV; `lfw_plainfull_06` adds `training.packing: plain`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / ".bench"
DATASET = "bench_alpaca"

# LLaMA-Factory 0.9.5's examples/train_lora/qwen3_lora_sft.yaml (git show v0.9.5:...), less the model, data and
# output keys that every run sets below. train_qlora/qwen3_lora_sft_otfq.yaml is the same plus the two
# quantization keys; train_full/qwen3_full_sft.yaml has finetuning_type full, ds_z3_config.json, grad-accum 2
# and lr 1e-5 (and no LoRA keys).
LF_EXAMPLE = {
    "trust_remote_code": True,
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "lora_rank": 8,
    "lora_target": "all",
    "template": "qwen3_nothink",
    "cutoff_len": 2048,
    "max_samples": 1000,
    "preprocessing_num_workers": 16,
    "dataloader_num_workers": 4,
    "logging_steps": 10,
    "save_steps": 500,
    "plot_loss": True,
    "overwrite_output_dir": True,
    "save_only_model": False,
    "report_to": "none",
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "learning_rate": 1.0e-4,
    "num_train_epochs": 3.0,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "bf16": True,
    "ddp_timeout": 180000000,
}
LF_QLORA = {"quantization_bit": 4, "quantization_method": "bnb"}
LF_FULL = {"finetuning_type": "full", "gradient_accumulation_steps": 2, "learning_rate": 1.0e-5}
# examples/deepspeed/ds_z3_config.json of LLaMA-Factory 0.9.5, verbatim.
DS_Z3 = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "fp16": {
        "enabled": "auto",
        "loss_scale": 0,
        "loss_scale_window": 1000,
        "initial_scale_power": 16,
        "hysteresis": 2,
        "min_loss_scale": 1,
    },
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "sub_group_size": 1e9,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
}
# Issue 11's best hand-tuned LLaMA-Factory settings, on top of the example's output/logging keys. The issue does
# not give its accumulation or schedule: 2 x 16 packed sequences of 1,024 tokens per step, lfw's learning rate
# and no warm-up (what lfw renders), all rows (no max_samples), so its loss curve can be set beside lfw's.
HAND_DROPS = ("max_samples", "warmup_ratio")
HAND_TUNED = {
    "finetuning_type": "full",
    "packing": True,
    "enable_liger_kernel": True,
    "disable_gradient_checkpointing": True,
    "per_device_train_batch_size": 16,
    "cutoff_len": 1024,
    "dataloader_num_workers": 2,
    "gradient_accumulation_steps": 2,
}
# What `lfw render` would find on the lent H200 (143,771 MiB = 140 GiB as lfw detects it, 16 CPUs), so the render
# here (no GPU) picks the micro batch and worker counts it would pick there.
DEVICE_ENV = {"LFW_GPU_MEM_GIB": "140", "LFW_CPUS": "16"}
# Measurement only: a loss and token count at every step.
MEASURE = {"logging_steps": 1, "include_num_input_tokens_seen": True}

# (name, source, method, shape, steps, seconds the device needs for it with start-up as estimated, recipe
# training fields beyond the bare recipe). lfw_plainfull_06 is the same bare recipe with plain packing (samples
# attend across their boundaries, as LF's `packing: true`), to measure what the neat default costs.
RUNS = [
    ("hand_full_06", "hand", "full", "0.6b", 20, 55, {}),
    ("lfw_full_06", "lfw", "full", "0.6b", 20, 55, {}),
    ("lf_lora_06", "lf", "lora", "0.6b", 6, 65, {}),
    ("lfw_lora_06", "lfw", "lora", "0.6b", 20, 50, {}),
    ("lfw_plainfull_06", "lfw", "full", "0.6b", 20, 50, {"packing": "plain"}),
    ("lfw_qlora_06", "lfw", "qlora", "0.6b", 20, 55, {}),
    ("lf_qlora_06", "lf", "qlora", "0.6b", 6, 70, {}),
    ("lf_full_06", "lf", "full", "0.6b", 6, 80, {}),
    ("lfw_lora_4b", "lfw", "lora", "4b", 15, 70, {}),
    ("lfw_full_4b", "lfw", "full", "4b", 15, 90, {}),
    ("lf_lora_4b", "lf", "lora", "4b", 5, 75, {}),
]


def lf_config(root: Path, name: str, source: str, method: str, shape: str, steps: int, hand_lr: float) -> dict:
    """One LLaMA-Factory train YAML (as a dict): the example for `method`, or the hand-tuned settings."""
    cfg = dict(LF_EXAMPLE)
    if source == "hand":
        cfg = {k: v for k, v in cfg.items() if k not in HAND_DROPS and not k.startswith("lora_")}
        cfg |= HAND_TUNED | {"learning_rate": hand_lr}
    elif method == "qlora":
        cfg |= LF_QLORA
    elif method == "full":
        cfg = {k: v for k, v in cfg.items() if not k.startswith("lora_")} | LF_FULL
        cfg["deepspeed"] = str(root / "ds_z3_config.json")
    return (
        cfg
        | MEASURE
        | {
            "model_name_or_path": str(root / "m" / shape),
            "dataset_dir": str(root / "data"),
            "dataset": DATASET,
            "output_dir": str(root / "out" / name),
            "max_steps": steps,
        }
    )


def lfw_recipe(root: Path, name: str, method: str, shape: str, steps: int, training: dict) -> dict:
    """A bare recipe: model, data, max_steps (and the method when it is not lfw's default LoRA)."""
    recipe: dict = {
        "name": name,
        "model": {"path": str(root / "m" / shape), "template": "qwen3_nothink"},
        "stages": [{"stage": "sft", "datasets": [{"path": str(root / "data" / "alpaca.json"), "format": "alpaca"}]}],
        "training": {"max_steps": steps, "logging_steps": MEASURE["logging_steps"]} | training,
        "llamafactory": {"include_num_input_tokens_seen": True},
    }
    if method != "lora":
        recipe["method"] = {"type": method}
    return recipe


def smoke_lf(cfg: dict) -> dict:
    """The CPU smoke test's changes to an LLaMA-Factory YAML: no bf16, DeepSpeed or liger; short sequences."""
    cfg = {k: v for k, v in cfg.items() if k not in ("deepspeed", "bf16", "enable_liger_kernel")}
    return cfg | {"use_cpu": True, "cutoff_len": 256, "preprocessing_num_workers": 2, "dataloader_num_workers": 0}


def render(recipe_path: Path, out: Path, args: list[str], env: dict[str, str]) -> None:
    command = [str(REPO / ".venv/bin/lfw"), "render", str(recipe_path), "--gpus", "1", "-o", str(out), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | env)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.render.txt").write_text(
        " ".join([*(f"{k}={v}" for k, v in env.items()), *command]) + "\n" + result.stdout + result.stderr
    )
    if result.returncode != 0:
        raise SystemExit(f"lfw render failed for {recipe_path}:\n{result.stdout}{result.stderr}")


def rendered_lr(root: Path, name: str) -> float:
    return float(yaml.safe_load((root / "cfg" / name / "1-sft.yaml").read_text())["learning_rate"])


def prepare_root(root: Path, smoke: bool) -> None:
    """The shared inputs under the root: data + dataset_info.json, model folders (configs, or the tiny model)."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    shutil.copy(BENCH / "data" / "alpaca.json", root / "data" / "alpaca.json")
    shutil.copy(BENCH / "data" / "alpaca.stats.json", root / "data" / "alpaca.stats.json")
    info = {DATASET: {"file_name": str(root / "data" / "alpaca.json")}}
    (root / "data" / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (root / "ds_z3_config.json").write_text(json.dumps(DS_Z3, indent=2) + "\n")
    for shape in ("0.6b", "4b"):
        source = REPO / "build" / "tiny" / "model" if smoke else BENCH / "models" / shape
        shutil.copytree(source, root / "m" / shape)


def write_all(root: Path, smoke: bool, render_args: list[str]) -> list[dict]:
    """Every run's files under root/cfg/<name>/ and its entry in the run list, in RUNS' order."""
    prepare_root(root, smoke)
    (root / "recipes").mkdir()
    # liger needs a GPU (triton): off in the CPU smoke test only
    smoke_sets = ["hardware.device=cpu", "training.cutoff_len=256", "training.liger_kernel=false"]
    extra = [arg for value in smoke_sets for arg in ("--set", value)] if smoke else []
    runs = {}
    # hand_full_* takes lfw's rendered learning rate, so the lfw recipes are rendered first.
    for name, source, method, shape, steps, est, training in sorted(RUNS, key=lambda run: run[1] == "hand"):
        steps = 3 if smoke else steps
        if source == "lfw":
            recipe_path = root / "recipes" / f"{name}.yml"
            recipe_path.write_text(
                yaml.safe_dump(lfw_recipe(root, name, method, shape, steps, training), sort_keys=False)
            )
            render(recipe_path, root / "cfg" / name, render_args + extra, {} if smoke else DEVICE_ENV)
            config = root / "cfg" / name / "1-sft.yaml"
        else:
            lr = rendered_lr(root, "lfw_full_06") if source == "hand" else 0.0
            cfg = lf_config(root, name, source, method, shape, steps, lr)
            config = root / "cfg" / name / "train.yaml"
            config.parent.mkdir(parents=True)
            config.write_text(yaml.safe_dump(smoke_lf(cfg) if smoke else cfg, sort_keys=False))
        text = config.read_text()
        runs[name] = {
            "name": name,
            "source": source,
            "method": method,
            "shape": shape,
            "steps": steps,
            "est_s": est,
            "config": str(config),
            "deepspeed": "deepspeed:" in text and not smoke,
        }
    return [runs[name] for name, *_ in RUNS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU smoke test: the tiny model, cpu, 3 steps")
    parser.add_argument("--render-arg", action="append", default=[], help="extra `lfw render` argument")
    args = parser.parse_args(argv)
    root = Path("/tmp/lfwbench-smoke" if args.smoke else "/tmp/lfwbench")
    runs = write_all(root, args.smoke, args.render_arg)
    (root / "runs.json").write_text(json.dumps({"root": str(root), "runs": runs}, indent=2) + "\n")
    if not args.smoke:  # the smoke test runs here, from the root itself
        shutil.rmtree(BENCH / "root", ignore_errors=True)
        shutil.copytree(root, BENCH / "root")
    print(f"{len(runs)} runs written under {root}" + ("" if args.smoke else f", copied to {BENCH / 'root'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
