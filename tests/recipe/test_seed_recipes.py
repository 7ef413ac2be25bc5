"""The seeds' bundled recipes, scaled down and run end to end on the CPU through `lfw run`.

Each test runs a bundled recipe as it is, with only `--set` overrides for what a CPU cannot do or need not
wait for: the tiny model (a tiny Qwen2-VL built here for the multimodal one), the tiny data, a few steps, one
CPU process. What it checks comes from LLaMA-Factory's own files: its log, trainer_log.jsonl, the adapter
config, and `lfw status` reading them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from lfw.cli import main
from tests.conftest import REPO

RECIPES = REPO / "recipes"
CPU = ["hardware.device=cpu", "hardware.gpus=1", "training.cutoff_len=128", "training.logging_steps=1"]


def run_recipe(recipe: str, out: Path, overrides: list[str]) -> Path:
    """`lfw run` a bundled recipe with overrides; the run directory (stage log tails on failure)."""
    argv = ["run", str(RECIPES / f"{recipe}.yml"), "--output-dir", str(out)]
    for item in overrides:
        argv += ["--set", item]
    code = main(argv)
    logs = sorted(out.glob("*/*/logs/*.log"))
    assert code == 0, "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
    (run_dir,) = [p for p in out.glob("*/*") if (p / "manifest.json").is_file()]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "ok"
    return run_dir


def stage_log(run_dir: Path, stage: str) -> str:
    """What LLaMA-Factory printed for a stage: its training log and, first, lfw's tokenize-once worker, where LF
    tokenizes (and prints its first example) when the tokenized cache is new."""
    logs = [run_dir / "logs" / f"{stage}.tokenize.log", run_dir / "logs" / f"{stage}.log"]
    return "".join(p.read_text(errors="replace") for p in logs if p.is_file())


def trainer_log(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "trainer_log.jsonl").read_text().splitlines()]


def status_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["status", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_000_qlora_sft_then_dpo(tiny, tmp_path, offline_env, capsys):
    """Seed 000: QLoRA SFT on alpaca, DPO on pairs on top of the SFT adapter (tokens/s logged), then export,
    eval of base/SFT/DPO and the report."""
    run_dir = run_recipe(
        "qwen3_4b_qlora_sft_dpo_4gpu",
        tmp_path / "runs",
        [
            *CPU,
            f"model.path={tiny['model']}",
            f"stages.0.datasets.0.path={tiny['sft_alpaca']}",
            f"stages.1.datasets.0.path={tiny['dpo_pairs']}",
            "training.global_batch_size=4",
            "training.micro_batch_size=2",
            "training.max_steps=2",
            f"eval.benchmarks=[{{path: {tiny['sft_alpaca']}, kind: alpaca, name: syn}}]",
            "eval.backend=hf",
            "eval.limit=2",
            "eval.max_new_tokens=4",
        ],
    )
    for stage in ("1-sft", "2-dpo"):
        log = (run_dir / "logs" / f"{stage}.log").read_text(errors="replace")
        assert "Quantizing model to 4 bit with bitsandbytes" in log, f"{stage}: base not quantized"
        assert trainer_log(run_dir / stage)[-1]["current_steps"] == 2
    assert f"Loaded adapter(s): {run_dir / '1-sft'}" in (run_dir / "logs" / "2-dpo.log").read_text()
    dpo = status_json(run_dir, capsys)["stages"][1]
    assert dpo["status"] == "ok" and dpo["step"] == 2 and dpo["tokens_per_second"] > 0 and dpo["total_tokens"] > 0
    assert dpo["accuracy"] is not None  # DPO's rewards/accuracies

    # The rest of the seed's pipeline ran in the same `lfw run`: merge both stages, score three models, report.
    for stage in ("1-sft", "2-dpo"):
        assert json.loads((run_dir / "export" / stage / "lineage.json").read_text())["verify"]["loads"]
    for label in ("base", "1-sft", "2-dpo"):
        assert json.loads((run_dir / "eval" / label / "summary.json").read_text())["benchmarks"]["syn"]["samples"] == 2
    report = (run_dir / "report" / "report.md").read_text()
    assert "| benchmark | metric | base | 1-sft | 2-dpo |" in report and "| 2-dpo | ok |" in report


@pytest.mark.slow
def test_001_full_sft_zero3_swanlab_every_5_steps(tiny, tmp_path, offline_env, monkeypatch, capsys):
    """Seed 001: full SFT under ZeRO-3 (one CPU process), loss logged, and sent to SwanLab, every 5 steps."""
    monkeypatch.chdir(tmp_path)  # nothing may land in the checkout, whatever SwanLab does
    run_dir = run_recipe(
        "qwen3_14b_full_z3_swanlab_4gpu",
        tmp_path / "runs",
        [
            *CPU[:3],
            f"model.path={tiny['model']}",
            f"stages.0.datasets.0.path={tiny['sft_alpaca']}",
            "training.global_batch_size=4",
            "training.max_steps=5",
            "tracking.swanlab.mode=local",
        ],
    )
    log = stage_log(run_dir, "1-sft")
    assert "DeepSpeed" in log and "Fine-tuning method: Full" in log
    (logged,) = [r for r in trainer_log(run_dir / "1-sft") if "loss" in r]
    assert logged["current_steps"] == 5
    # SwanLab's local files: one summary per metric; each metric got one point, at step 5, the loss among them.
    summaries = [json.loads(p.read_text()) for p in (run_dir / "swanlog").glob("run-*/logs/*/_summary.json")]
    assert summaries and all((m["num"], m["min_step"], m["max_step"]) == (1, 5, 5) for m in summaries), summaries
    assert any(m["max"] == pytest.approx(logged["loss"]) for m in summaries), (logged, summaries)


# ---------------------------------------------------------------------------------------------------------------
# Seed 003: a tiny Qwen2-VL (2 text layers, a 2-block vision encoder, 4 visual tokens per 56x56 image).
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def build_tiny_qwen2_vl(text_model: Path, out: Path) -> Path:
    """A random-weight Qwen2VLForConditionalGeneration with the tiny tokenizer plus Qwen2-VL's vision tokens."""
    import torch
    from transformers import (
        AutoTokenizer,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(text_model)
    tokenizer.add_tokens(VISION_TOKENS, special_tokens=True)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    torch.manual_seed(0)
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer) + (-len(tokenizer)) % 64,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},  # head_dim 16: 8 rotary pairs
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": True,
        },
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    Qwen2VLForConditionalGeneration(config).save_pretrained(out)
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )
    processor.save_pretrained(out)
    return out


def llava_rows(folder: Path) -> Path:
    """Coloured squares in the seed's LLaVA layout: an `image` path and sharegpt `conversations` with <image>."""
    from PIL import Image

    (folder / "llava_images").mkdir(parents=True)
    rows: list[dict] = []
    for name, rgb in {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}.items():
        Image.new("RGB", (56, 56), rgb).save(folder / "llava_images" / f"{name}.png")
        image = f"llava_images/{name}.png"
        for number, question in enumerate(("What colour is this?\n<image>", "<image>\nName the colour.")):
            turns = [{"from": "human", "value": question}, {"from": "gpt", "value": f"It is {name}."}]
            rows.append({"id": f"{name}_{number}", "image": image, "conversations": turns})
    path = folder / "llava_data.json"
    path.write_text(json.dumps(rows, indent=1))
    return path


@pytest.mark.slow
def test_003_llava_style_lora_on_a_tiny_qwen2_vl(tiny, tmp_path, offline_env):
    """Seed 003: LoRA on the language model of a Qwen2-VL, its projector trained whole, its vision encoder frozen."""
    model = build_tiny_qwen2_vl(tiny["model"], tmp_path / "qwen2-vl-tiny")
    data = llava_rows(tmp_path / "data")
    run_dir = run_recipe(
        "qwen2_5_vl_7b_lora_llava",
        tmp_path / "runs",
        [
            *CPU,
            f"model.path={model}",
            f"stages.0.datasets.0.path={data}",
            "training.global_batch_size=4",
            "training.micro_batch_size=2",
            "training.max_steps=2",
        ],
    )
    log = stage_log(run_dir, "1-sft")
    assert "Set vision model not trainable: ['visual.patch_embed', 'visual.blocks']" in log
    assert "<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>" in log  # 4 tokens
    adapter = json.loads((run_dir / "1-sft" / "adapter_config.json").read_text())
    assert adapter["target_modules"] and all(".language_model.layers." in t for t in adapter["target_modules"])
    assert adapter["modules_to_save"] == ["visual.merger"]
    # LoRA rank 16 on 2 layers x (q 64+64, k 64+32, v 64+32, o 64+64, gate/up 64+128, down 128+64), plus the
    # whole projector: LayerNorm(32) and an MLP 128 -> 128 -> 64 (128 = 32 channels x 2 x 2 merged patches).
    lora = 16 * 2 * (128 + 96 + 96 + 128 + 192 + 192 + 192)
    projector = 2 * 32 + (128 * 128 + 128) + (128 * 64 + 64)
    assert f"trainable params: {lora + projector:,} ||" in log
    from safetensors import safe_open

    with safe_open(run_dir / "1-sft" / "adapter_model.safetensors", "pt") as saved:
        names = list(saved.keys())
    assert any("visual.merger.mlp.0.weight" in n for n in names) and not any("visual.blocks" in n for n in names)
    losses = [r["loss"] for r in trainer_log(run_dir / "1-sft") if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


QWEN25_VL_7B = {  # the text model of huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/config.json (what lfw plan reads)
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "max_position_embeddings": 128000,
}


def test_003_comment_shows_the_ladder_lfw_plan_prints(tmp_path, capsys):
    """The OOM ladder in the recipe's comment is what `lfw plan` prints for Qwen2.5-VL-7B on a 24 GiB GPU."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_VL_7B))
    recipe = RECIPES / "qwen2_5_vl_7b_lora_llava.yml"
    capsys.readouterr()
    assert main(["plan", str(recipe), "--set", f"model.path={tmp_path}", "--gpu-mem", "24"]) == 0
    printed = capsys.readouterr().out
    comment = "\n".join(line for line in recipe.read_text().splitlines() if line.startswith("#"))
    ladder = re.findall(r"^#     (\S+: .+?)\s{2,}(\d+\.\d\d)\s+(yes|no)$", comment, re.MULTILINE)
    assert len(ladder) == 4, comment  # liger and checkpointing are on already: that step is left out
    rows = re.findall(r"│ (\S+: .+?)\s*│ (\d+\.\d\d)\s*│ (yes|no)\s*│", printed)
    assert [(step.split(" ")[0], gib, fits) for step, gib, fits in rows] == [
        (step.split(" ")[0], gib, fits) for step, gib, fits in ladder
    ], printed
    assert re.search(r"does not fit: (\S+) GiB needed", printed).group(1) in comment


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_004_full_sft_deepspeed_on_chosen_answers_with_eval_perplexity(tiny, tmp_path, offline_env, capsys):
    """Seed 004: prompt/chosen/rejected rows, SFT on the chosen answer, eval loss and perplexity from val_size."""
    pairs = json.loads(Path(tiny["dpo_pairs"]).read_text())
    rows = [{"prompt": r["instruction"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in pairs]
    data = tmp_path / "CVPR2024Summary.json"
    data.write_text(json.dumps(rows, ensure_ascii=False))
    run_dir = run_recipe(
        "qwen3_0_6b_full_ds_chosen",
        tmp_path / "runs",
        [
            *CPU,
            f"model.path={tiny['model']}",
            f"stages.0.datasets.0.path={data}",
            "training.global_batch_size=8",
            "training.micro_batch_size=4",
            "training.max_steps=4",
            "training.eval_steps=2",
        ],
    )
    log = stage_log(run_dir, "1-sft")
    assert "DeepSpeed" in log and "Fine-tuning method: Full" in log
    # LF prints its first training example: the whole text, then what the loss is computed on.
    inputs, _, rest = log.split("inputs:\n", 1)[1].partition("label_ids:")
    labels = rest.split("labels:\n", 1)[1][:300]
    shown = next(r for r in rows if r["prompt"] in inputs)
    assert shown["chosen"] in labels and shown["rejected"] not in labels and shown["prompt"] not in labels

    stage = status_json(run_dir, capsys)["stages"][0]
    lf_evals = [r for r in trainer_log(run_dir / "1-sft") if "eval_loss" in r]
    assert [e["step"] for e in stage["evaluations"]] == [r["current_steps"] for r in lf_evals] == [2, 4]
    for ours, lf in zip(stage["evaluations"], lf_evals, strict=True):
        assert ours["eval_loss"] == lf["eval_loss"] and ours["perplexity"] == pytest.approx(math.exp(lf["eval_loss"]))
    assert main(["status", str(run_dir.parent)]) == 0  # the recipe's run folder: its newest run
    text = capsys.readouterr().out
    last = lf_evals[-1]["eval_loss"]
    assert f"eval loss {last:.4f} (perplexity {math.exp(last):.2f})" in text and "1-sft  ok  step 4/4" in text
