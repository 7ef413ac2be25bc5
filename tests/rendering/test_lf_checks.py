"""What lfw renders must mean to LLaMA-Factory 0.9.5 what the recipe says: values, templates, stage chains.

Each check has a rejecting and a passing case. LLaMA-Factory's own behaviour on these files (which model it
builds, which rows it loads) is exercised in test_oracle.py; these tests pin the rules lfw applies before that.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lfw.infra.errors import UserError
from lfw.launch.target import Target
from lfw.preflight.memory.planner import PlanInput, estimate
from lfw.preflight.memory.shapes import preset_for
from lfw.recipe.lf_keys import known_keys, rendered_keys
from lfw.recipe.loader import load_recipe
from lfw.rendering.environment import yaml_scalar
from lfw.rendering.render import render
from lfw.rendering.stage_models import stage_models
from tests.conftest import minimal_recipe

RUN_DIR = Path("/RUN")


def _stage(rendering, index: int = 0) -> dict:
    return yaml.safe_load(next(f.content for f in rendering.files if f.name == rendering.stages[index].config))


def _dpo_recipe(**changes) -> dict:
    recipe = minimal_recipe(**changes)
    recipe["stages"].append({"stage": "dpo", "datasets": [{"path": "p.json", "format": "preference"}]})
    return recipe


def test_qlora_renders_the_quantization_method_llamafactory_compares_against(write_recipe):
    for spelled in ("bnb", "bitsandbytes"):
        recipe = minimal_recipe(method={"type": "qlora", "quantization": {"bits": 4, "method": spelled}})
        config = _stage(render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR))
        assert config["quantization_method"] == "bnb" and config["quantization_bit"] == 4
        assert known_keys().value_problem("quantization_method", config["quantization_method"]) is None
    assert known_keys().value_problem("quantization_method", "bitsandbytes") is not None


def test_eetq_needs_eight_bits(write_recipe):
    with pytest.raises(UserError, match="eetq quantizes to 8 bits only"):
        load_recipe(str(write_recipe(minimal_recipe(method={"type": "qlora", "quantization": {"method": "eetq"}}))))
    load_recipe(
        str(write_recipe(minimal_recipe(method={"type": "qlora", "quantization": {"method": "eetq", "bits": 8}})))
    )


def test_floats_stay_floats_for_pyyaml():
    for value in (3e-05, 1e-4, 5.0e-6, 0.1, 2.0, 1e20):
        assert yaml.safe_load(f"x: {yaml_scalar(value)}")["x"] == value


def test_misspelled_template_is_refused_with_the_closest_name(write_recipe):
    recipe = minimal_recipe(model={"path": "Qwen/Qwen3-0.6B", "template": "qwen3_nothnk"})
    with pytest.raises(UserError, match="(?s)'qwen3_nothnk' is not a template.*did you mean 'qwen3_nothink'"):
        render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR)
    recipe["model"]["template"] = "qwen3_nothink"
    render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR)


def test_text_only_template_on_image_data_is_refused(write_recipe):
    recipe = minimal_recipe()
    recipe["stages"][0]["datasets"] = [{"path": "mm.json", "format": "multimodal"}]
    with pytest.raises(UserError, match="(?s)has images but template 'qwen3_nothink' is text-only.*qwen2_vl"):
        render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR)
    recipe["model"] = {"path": "Qwen/Qwen2-VL-2B-Instruct", "template": "qwen2_vl"}
    render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR)


@pytest.mark.parametrize(
    "key,bad,good,message",
    [
        ("neftune_noise_alpha", "abc", 5, "'abc' is a string; LLaMA-Factory expects a number"),
        # typed str, choices only in metadata; LF silently falls back to random sampling on a typo
        ("train_sampling_strategy", "sequentail", "sequential", "'sequentail' is not one of LLaMA-Factory's values"),
        ("fp8_backend", "torchoa", "torchao", "'torchoa' is not one of LLaMA-Factory's values"),  # help-text choices
        ("trackio_static_space_id", True, "me/space", "True is not one of LLaMA-Factory's values: False"),
        ("rope_scaling", "sideways", "yarn", "'sideways' is not one of LLaMA-Factory's values: linear, dynamic, yarn"),
        ("use_dora", "yes", True, "'yes' is a string; LLaMA-Factory expects true/false"),
    ],
)
def test_passthrough_values_are_checked_against_llamafactory_types(write_recipe, key, bad, good, message):
    with pytest.raises(UserError, match=f"llamafactory.{key}: {message}"):
        load_recipe(str(write_recipe(minimal_recipe(llamafactory={key: bad}))))
    loaded = load_recipe(str(write_recipe(minimal_recipe(llamafactory={key: good}))))
    assert _stage(render(loaded, Target("cpu", 1), RUN_DIR))[key] == good


@pytest.mark.parametrize("key", ["deepspeed", "eval_dataset", "dataset", "output_dir", "bf16", "create_new_adapter"])
def test_passthrough_cannot_set_what_lfw_owns(write_recipe, key):
    with pytest.raises(
        UserError, match=f"llamafactory.{key}: lfw (cannot pass this key through|renders this key itself)"
    ):
        load_recipe(str(write_recipe(minimal_recipe(llamafactory={key: "x"}))))


def test_list_values_where_llamafactory_splits_them_and_eval_only_keys_refused(write_recipe):
    load_recipe(str(write_recipe(minimal_recipe(llamafactory={"additional_target": ["embed_tokens", "lm_head"]}))))
    with pytest.raises(UserError, match="llamafactory.batch_size: not an argument of LLaMA-Factory"):
        load_recipe(str(write_recipe(minimal_recipe(llamafactory={"batch_size": 8}))))  # EvaluationArguments only


def test_owned_keys_come_from_the_template():
    owned = rendered_keys()
    assert {"quantization_method", "ref_model_adapters", "create_new_adapter", "per_device_train_batch_size"} <= owned
    assert "neftune_noise_alpha" not in owned


def test_swanlab_modes_are_llamafactorys(write_recipe):
    with pytest.raises(UserError, match="tracking.swanlab.mode"):
        load_recipe(str(write_recipe(minimal_recipe(tracking={"swanlab": {"project": "p", "mode": "offline"}}))))


def test_every_rendered_value_is_one_llamafactory_understands(write_recipe):
    """A generic walk: every key of every stage of a broad variant matrix, type and enum value checked."""
    keys = known_keys()
    variants = [
        ["method.type=qlora"],
        ["method.type=qlora", "method.quantization.bits=8"],
        ["method.type=full", "hardware.deepspeed=z3"],
        ["method.type=freeze", "hardware.deepspeed=z2"],
        ["hardware.deepspeed=z3_offload", "training.val_size=0.1", "training.warmup_ratio=0.1"],
        ["tracking.swanlab.project=p", "tracking.swanlab.mode=local", "training.packing=true"],
    ]
    path = str(write_recipe(_dpo_recipe()))
    for overrides in variants:
        rendering = render(load_recipe(path, overrides), Target("cpu", 2), RUN_DIR)
        for index in range(len(rendering.stages)):
            config = _stage(rendering, index)
            bad = {k: keys.value_problem(k, v) for k, v in config.items() if keys.value_problem(k, v)}
            assert not bad, (overrides, index, bad)


def test_lora_chain_stacks_a_new_adapter_and_uses_the_policy_as_reference(write_recipe):
    dpo = _stage(render(load_recipe(str(write_recipe(_dpo_recipe()))), Target("cpu", 1), RUN_DIR), 1)
    assert dpo["adapter_name_or_path"] == "/RUN/1-sft" and dpo["create_new_adapter"] is True
    assert "ref_model" not in dpo  # LF: LoRA without ref_model = the policy with its adapter disabled


@pytest.mark.parametrize("deepspeed", ["z3", "z3_offload"])
def test_lora_chain_under_zero3_keeps_training_one_adapter(write_recipe, deepspeed):
    """LF cannot merge adapters under ZeRO-3 (is_mergeable False): it resumes the last one, so lfw says so."""
    recipe = _dpo_recipe(hardware={"device": "cpu", "deepspeed": deepspeed})
    recipe["stages"].append({"stage": "sft", "datasets": [{"path": "data.json", "format": "alpaca"}]})
    rendering = render(load_recipe(str(write_recipe(recipe))), Target("cpu", 2), RUN_DIR)
    dpo, third = _stage(rendering, 1), _stage(rendering, 2)
    assert dpo["adapter_name_or_path"] == "/RUN/1-sft" and "create_new_adapter" not in dpo
    assert dpo["ref_model_adapters"] == "/RUN/1-sft" and "ref_model_quantization_bit" not in dpo
    assert third["adapter_name_or_path"] == "/RUN/2-dpo"  # one adapter: LF asserts on several under ZeRO-3
    assert "ref_model" not in third
    text = next(f.content for f in rendering.files if f.name == rendering.stages[1].config)
    assert "With DeepSpeed ZeRO-3 LLaMA-Factory cannot merge or stack adapters" in text


def test_qlora_chain_reference_is_the_previous_stage_quantized(write_recipe):
    recipe = _dpo_recipe(method={"type": "qlora"})
    dpo = _stage(render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR), 1)
    assert dpo["adapter_name_or_path"] == "/RUN/1-sft" and "create_new_adapter" not in dpo
    assert dpo["ref_model_adapters"] == "/RUN/1-sft" and dpo["ref_model_quantization_bit"] == 4


def test_reference_free_losses_load_no_reference(write_recipe):
    recipe = _dpo_recipe(method={"type": "qlora"})
    recipe["stages"][1]["pref_loss"] = "orpo"
    dpo = _stage(render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR), 1)
    assert "ref_model" not in dpo and dpo["pref_loss"] == "orpo"


def test_plan_and_render_agree_on_the_reference(write_recipe):
    """The planner counts a reference copy exactly when render makes LLaMA-Factory load one."""
    arch = preset_for("Qwen/Qwen3-4B")
    cases = [("lora", "none"), ("qlora", "none"), ("qlora", "z3"), ("qlora", "z3_offload"), ("lora", "z3"),
             ("full", "none")]  # fmt: skip
    for method, deepspeed in cases:
        recipe = _dpo_recipe(method={"type": method}, hardware={"device": "cpu", "deepspeed": deepspeed})
        loaded = load_recipe(str(write_recipe(recipe)))
        models = stage_models(loaded.recipe, 1, "base", ["/RUN/1-sft"])
        config = _stage(render(loaded, Target("cpu", 2), RUN_DIR), 1)
        inp = PlanInput(arch, method=method, quant_bits=4 if method == "qlora" else None, deepspeed=deepspeed,
                        world_size=2, stage="dpo", chained=True)  # fmt: skip
        reference = next(c for c in estimate(inp).components if c.name == "reference model")
        loads_copy = "ref_model" in config or method == "full"  # full: LF copies the model itself
        assert (models.reference == "copy") == loads_copy == (reference.bytes > 0), (method, deepspeed)


def test_eight_bit_base_under_zero3_is_refused_before_any_stage(write_recipe):
    """LF raises 'Only 4-bit quantized model can use fsdp+qlora' at model load, after data prep: refuse at load."""
    recipe = minimal_recipe(method={"type": "qlora", "quantization": {"bits": 8}})
    recipe["hardware"] = {"device": "cpu", "deepspeed": "z3"}
    with pytest.raises(UserError, match="8-bit bnb cannot run under DeepSpeed ZeRO-3"):
        load_recipe(str(write_recipe(recipe)))
    recipe["method"]["quantization"]["bits"] = 4
    load_recipe(str(write_recipe(recipe)))


@pytest.mark.parametrize("deepspeed", ["none", "z3", "z3_offload"])
def test_a_quantized_reference_is_planned_whole_on_each_gpu(deepspeed):
    """LF's DPO trainer does not hand a 4-bit reference to DeepSpeed: ZeRO neither partitions nor offloads it."""
    arch = preset_for("Qwen/Qwen3-14B")
    inp = PlanInput(arch, method="qlora", quant_bits=4, deepspeed=deepspeed, world_size=4, stage="dpo", chained=True)
    reference = next(c for c in estimate(inp).components if c.name == "reference model")
    weights = estimate(PlanInput(arch, method="qlora", quant_bits=4)).components[0]
    assert weights.name == "weights (frozen)" and reference.bytes > weights.bytes  # base + adapter, unsharded


@pytest.mark.parametrize(
    "model_config,passthrough,reason",
    [
        ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, {}, "a gptq-quantized base model"),
        ({}, {"use_unsloth": True}, "Unsloth"),
    ],
)
def test_other_single_adapter_bases_keep_training_one_adapter(
    write_recipe, tmp_path, model_config, passthrough, reason
):
    """LF's is_mergeable is False for pre-quantized checkpoints and Unsloth too (model/adapter.py)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3", **model_config}))
    recipe = _dpo_recipe(model={"path": str(model), "template": "qwen3_nothink"}, llamafactory=passthrough)
    rendering = render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR)
    dpo = _stage(rendering, 1)
    assert "create_new_adapter" not in dpo and dpo["ref_model_adapters"] == "/RUN/1-sft"
    assert f"With {reason} LLaMA-Factory cannot merge" in rendering.files[-1].content


def test_added_tokens_with_a_reference_copy_are_refused(write_recipe):
    recipe = _dpo_recipe(method={"type": "qlora"}, llamafactory={"add_tokens": "<a>,<b>"})
    with pytest.raises(UserError, match="llamafactory.add_tokens: LLaMA-Factory 0.9.5 crashes loading the reference"):
        render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR)
    recipe["stages"][1]["pref_loss"] = "simpo"
    render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR)


def test_oom_ladder_steps_keep_the_micro_batch_until_its_own_step():
    """Each step once was estimated at micro batch 1, so the first steps looked as if they already fitted."""
    from lfw.preflight.memory.choice import oom_ladder
    from lfw.preflight.memory.planner import GIB

    inp = PlanInput(preset_for("Qwen/Qwen3-4B"), method="full", micro_batch=8, cutoff_len=4096)
    steps = oom_ladder(inp, 24 * GIB)
    micro_step = next(i for i, s in enumerate(steps) if s.action.startswith("training.micro_batch_size"))
    assert micro_step > 0
    assert all(s.estimate.inp.micro_batch == 8 for s in steps[:micro_step])
    assert all(s.estimate.inp.micro_batch == 1 for s in steps[micro_step:])
    assert steps[micro_step].estimate.total < steps[micro_step - 1].estimate.total
