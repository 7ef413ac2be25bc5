"""`lfw plan`: the arithmetic against hand-computed cases, the OOM ladder, `micro_batch_size: auto`."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from lfw.cli import main
from lfw.preflight.memory.choice import candidate_micro_batches, choose, choose_micro_batch, oom_ladder, suggest_zero
from lfw.preflight.memory.planner import GIB, NF4_BYTES, PlanInput, estimate, lora_params, weight_bytes
from lfw.preflight.memory.shapes import PRESETS, preset_for, resolve_arch
from tests.conftest import minimal_recipe

Q06 = PRESETS["qwen3-0.6b"]
Q4 = PRESETS["qwen3-4b"]


def part(est, name: str) -> float:
    return next(c.bytes for c in est.components if c.name == name)


def test_qwen3_param_counts_match_the_published_sizes() -> None:
    # embeddings 151936 x 1024 (tied) + 28 layers x (linear 15,728,640 + norms 2,304) + final norm 1024
    assert Q06.params == 151936 * 1024 + 28 * (15_728_640 + 2_304) + 1024 == 596_049_920
    assert 4.0e9 < Q4.params < 4.05e9


def test_bf16_weights_are_two_bytes_per_parameter() -> None:
    assert weight_bytes(Q06, None, 2) == Q06.params * 2
    lora = estimate(PlanInput(Q06, method="lora"))
    assert part(lora, "weights (frozen)") == Q06.params * 2


def test_nf4_quantizes_only_the_block_linears() -> None:
    linear = 28 * 15_728_640
    assert weight_bytes(Q06, 4) == pytest.approx(linear * NF4_BYTES + (Q06.params - linear) * 2)


def test_lora_parameter_count_for_rank_8() -> None:
    # per layer r x (in + out): q 1024+2048, k and v 1024+1024, o 2048+1024,
    # gate and up 1024+3072, down 3072+1024
    per_layer = 8 * (3072 + 2048 + 2048 + 3072 + 4096 + 4096 + 4096)
    assert lora_params(Q06, 8, "all") == 28 * per_layer == 5_046_272
    assert lora_params(Q06, 8, "q_proj,v_proj") == 28 * 8 * (3072 + 2048)


def test_full_tuning_state_is_sixteen_bytes_per_parameter() -> None:
    est = estimate(PlanInput(Q06, method="full", micro_batch=1, cutoff_len=512))
    assert part(est, "trainable weights") == Q06.params * 4  # fp32 (LLaMA-Factory casts trainable params)
    assert part(est, "optimizer (AdamW)") == Q06.params * 8
    assert part(est, "gradients") == Q06.params * 4


def test_zero3_divides_weights_and_state_by_world_size() -> None:
    one = estimate(PlanInput(Q4, method="full", deepspeed="z3", world_size=1))
    four = estimate(PlanInput(Q4, method="full", deepspeed="z3", world_size=4))
    assert part(four, "trainable weights") == pytest.approx(part(one, "trainable weights") / 4)
    assert part(four, "optimizer (AdamW)") == pytest.approx(Q4.params * 12 / 4)  # fp32 master + 2 moments
    offload = estimate(PlanInput(Q4, method="full", deepspeed="z3_offload", world_size=4))
    assert part(offload, "optimizer (AdamW)") == 0 and offload.cpu_bytes >= Q4.params * 12


def test_activations_grow_with_tokens_and_checkpointing_saves_most() -> None:
    base = PlanInput(Q06, micro_batch=1, cutoff_len=512)
    a1 = part(estimate(base), "activations")
    a4 = part(estimate(replace(base, micro_batch=4)), "activations")
    assert a4 == pytest.approx(4 * a1)
    no_gc = part(estimate(replace(base, gradient_checkpointing=False)), "activations")
    assert no_gc > 5 * a1


def test_logits_are_tokens_times_vocab_and_liger_removes_them() -> None:
    est = estimate(PlanInput(Q06, micro_batch=2, cutoff_len=1024))
    assert part(est, "logits and loss") == 2 * 1024 * 151936 * 12
    liger = estimate(PlanInput(Q06, micro_batch=2, cutoff_len=1024, liger=True))
    assert part(liger, "logits and loss") < part(est, "logits and loss") / 20


def test_dpo_doubles_sequences_and_adds_a_reference_for_full_tuning() -> None:
    sft = estimate(PlanInput(Q06, method="full", stage="sft", gradient_checkpointing=False))
    dpo = estimate(PlanInput(Q06, method="full", stage="dpo", gradient_checkpointing=False))
    assert dpo.inp.tokens == 2 * sft.inp.tokens
    assert part(dpo, "reference model") == Q06.params * 2
    lora_dpo = estimate(PlanInput(Q06, method="lora", stage="dpo"))
    assert part(lora_dpo, "reference model") == 0  # the base with adapters off
    assert dpo.total > 1.5 * sft.total


def test_choice_is_the_largest_dividing_micro_batch_that_fits() -> None:
    assert candidate_micro_batches(64, 2) == [1, 2, 4, 8, 16, 32]
    inp = PlanInput(Q06, cutoff_len=1024)
    choice = choose_micro_batch(inp, 64, 80 * GIB)
    assert choice.micro_batch is not None and 64 % choice.micro_batch == 0
    assert choice.grad_accum == 64 // choice.micro_batch
    assert choice.estimate.fits(80 * GIB)
    bigger = [m for m in candidate_micro_batches(64, 1) if m > choice.micro_batch]
    assert all(not estimate(replace(inp, micro_batch=m)).fits(80 * GIB) for m in bigger)


def test_nothing_fits_gives_the_ladder() -> None:
    inp = PlanInput(Q4, method="full", cutoff_len=4096)
    assert choose_micro_batch(inp, 16, 24 * GIB).micro_batch is None
    ladder = oom_ladder(inp, 24 * GIB)
    assert ladder[0].action.startswith("method.type: qlora")
    assert any(step.action.startswith("hardware.deepspeed: z3_offload") for step in ladder)
    totals = [step.estimate.total for step in ladder]
    assert totals == sorted(totals, reverse=True) and ladder[-1].fits


def test_presets_recognise_hub_ids_and_local_configs(tmp_path) -> None:
    assert preset_for("Qwen/Qwen3-4B-Instruct-2507") is Q4
    assert preset_for("meta-llama/Llama-3-8B") is None
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 128,
                "vocab_size": 1000,
                "tie_word_embeddings": False,
                "quantization_config": {"quant_method": "gptq"},
            }
        )
    )
    arch = resolve_arch(str(tmp_path))
    assert (arch.head_dim, arch.quantization, arch.qk_norm) == (16, "gptq", False)


def test_plan_command_prints_the_ladder(write_recipe, runner) -> None:
    from lfw.cli import cli

    recipe = minimal_recipe(method={"type": "full"}, hardware={"gpus": 1})
    recipe["model"]["path"] = "Qwen/Qwen3-8B"
    path = write_recipe(recipe)
    result = runner.invoke(cli, ["plan", str(path), "--gpu-mem", "24"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "does not fit" in result.output and "qlora" in result.output and "z3_offload" in result.output


def test_plan_command_picks_a_micro_batch(write_recipe, runner) -> None:
    from lfw.cli import cli

    recipe = minimal_recipe(hardware={"gpus": 1})
    recipe["training"]["micro_batch_size"] = "auto"
    result = runner.invoke(cli, ["plan", str(write_recipe(recipe)), "--gpu-mem", "80"], terminal_width=200)
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # rich wraps lines
    assert "gradient accumulation" in printed and "gradient checkpointing off" in printed


def test_plan_command_suggests_a_zero_stage(write_recipe, runner) -> None:
    from lfw.cli import cli

    recipe = minimal_recipe(method={"type": "full"}, hardware={"gpus": 4})
    recipe["model"]["path"] = "Qwen/Qwen3-14B"
    recipe["training"]["micro_batch_size"] = "auto"
    result = runner.invoke(cli, ["plan", str(write_recipe(recipe)), "--gpu-mem", "80"], terminal_width=200)
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # rich wraps lines
    assert "does not fit" in printed and "note: hardware.deepspeed: z3 fits" in printed


def test_auto_micro_batch_renders_a_number(write_recipe, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "data.json").write_text('[{"instruction": "a", "input": "", "output": "b"}]')
    recipe = minimal_recipe()
    recipe["training"]["micro_batch_size"] = "auto"
    path = write_recipe(recipe)
    assert main(["render", str(path)]) == 0  # CPU: auto is 1
    assert "per_device_train_batch_size: 1\n" in capsys.readouterr().out
    recipe["hardware"] = {"gpus": 1}
    path = write_recipe(recipe)
    monkeypatch.setenv("LFW_GPU_MEM_GIB", "80")
    assert main(["render", str(path)]) == 0
    text = capsys.readouterr().out
    micro = int(text.split("per_device_train_batch_size: ")[1].split()[0])
    accum = int(text.split("gradient_accumulation_steps: ")[1].split()[0])
    assert micro > 1 and micro * accum == 8


def test_plan_imports_no_torch_or_transformers(write_recipe) -> None:
    path = write_recipe(minimal_recipe(hardware={"gpus": 1}))
    code = (
        f"import sys; from lfw.cli import main; rc = main(['plan', {str(path)!r}, '--gpu-mem', '40']);"
        "bad = [m for m in ('torch', 'transformers', 'llamafactory') if m in sys.modules];"
        "sys.exit(rc or (3 if bad else 0))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_checkpointing_only_when_it_buys_a_much_larger_micro_batch() -> None:
    small = PlanInput(Q06, method="full", cutoff_len=2048, liger=True)
    roomy = choose(small, 16, 140 * GIB)
    assert roomy.micro_batch is not None and not roomy.estimate.inp.gradient_checkpointing  # fits without it
    tight = PlanInput(Q4, method="lora", cutoff_len=2048, liger=True)  # without it: micro 1 x 2048 tokens only
    on = choose(tight, 16, 24 * GIB)
    without = choose_micro_batch(replace(tight, gradient_checkpointing=False), 16, 24 * GIB)
    assert on.estimate.inp.gradient_checkpointing and on.micro_batch is not None
    assert without.micro_batch == 1 and on.micro_batch >= 2
    busy = choose(replace(tight, cutoff_len=4096), 16, 40 * GIB)  # 4096 tokens x hidden 2560 keep the GPU busy
    assert busy.micro_batch == 1 and not busy.estimate.inp.gradient_checkpointing
    fixed = choose(small, 16, 140 * GIB, micro=2)
    assert fixed.micro_batch == 2 and fixed.grad_accum == 8 and not fixed.estimate.inp.gradient_checkpointing
    asked = choose(small, 16, 140 * GIB, checkpointing=True)
    assert asked.estimate.inp.gradient_checkpointing


def test_neat_packing_counts_its_attention_mask() -> None:
    packed = estimate(PlanInput(Q06, micro_batch=4, cutoff_len=2048, packing="neat"))
    assert part(packed, "attention mask") == 4 * 2048 * 2048 * 2  # (micro, 1, T, T) in bf16
    assert all(c.name != "attention mask" for c in estimate(PlanInput(Q06, packing="plain")).components)


def test_zero_stage_suggested_when_nothing_fits() -> None:
    inp = PlanInput(PRESETS["qwen3-14b"], method="full", cutoff_len=2048, world_size=4)
    choice = choose(inp, 8, 80 * GIB)
    assert choice.micro_batch is None and choice.estimate.inp.gradient_checkpointing
    assert choice.notes and choice.notes[-1].startswith("hardware.deepspeed: z3")
    assert suggest_zero(replace(inp, deepspeed="z3_offload"), 80 * GIB) is None  # nothing past offload
