"""`lfw import` run as LLaMA-Factory users run it: from a checkout's root, with LF's own YAML rules and defaults.

The YAMLs and data here are written for the tests (LF-style, not copied). LLaMA-Factory's own parser is the judge:
the original YAML and the rendered one must parse to the same arguments, lfw's documented policies aside.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from lfw.cli import cli
from lfw.infra.errors import UserError
from lfw.launch.target import Target
from lfw.recipe.lf_import import LF_DEFAULTS, check_imported, dataset_format, import_config
from lfw.recipe.loader import load_recipe
from lfw.rendering.render import render

# Keys lfw sets by policy (README, `lfw import`): each run its own directory, datasets registered by lfw, the
# data tokenized once into lfw's cache, report_to none, transformers 5's warmup spelling, the long multi-GPU timeout.
POLICY = {"output_dir", "overwrite_output_dir", "dataset_dir", "resume_from_checkpoint", "report_to",
          "overwrite_cache", "tokenized_path", "ddp_timeout", "warmup_ratio", "media_dir"}  # fmt: skip

ZERO3 = {
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 3, "overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1e9,
        "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True,
    },
}  # fmt: skip
REGISTRY = {
    "demo_alpaca": {"file_name": "demo_alpaca.json"},
    "demo_chat": {"file_name": "demo_chat.json", "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "system": "system"}},
    "demo_pairs": {"file_name": "demo_pairs.json", "ranking": True, "formatting": "sharegpt",
                   "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    "demo_text": {"file_name": "demo_text.jsonl", "columns": {"prompt": "text"}},
    "hub_only": {"om_hub_url": "someone/some-data"},
    "demo_subset": {"file_name": "demo_alpaca.json", "num_samples": 1},
}  # fmt: skip
COMMON = """model_name_or_path: Qwen/Qwen3-0.6B
trust_remote_code: true
do_train: true
cutoff_len: 1024
max_samples: 100
preprocessing_num_workers: 4
output_dir: saves/demo/{name}
overwrite_output_dir: true
"""
GOOD = {
    # relative deepspeed and dataset_dir (default data/), OmegaConf's 2e-5, the keys the README promises notes for
    "sft_ds3": COMMON
    + """stage: sft
finetuning_type: lora
lora_rank: 16
lora_target: q_proj,v_proj
deepspeed: examples/deepspeed/ds_z3.json
dataset: demo_alpaca, demo_chat
template: qwen3_nothink
report_to: wandb
resume_from_checkpoint: null
per_device_train_batch_size: 2
gradient_accumulation_steps: 4
learning_rate: 2e-5
num_train_epochs: 2.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
dataloader_num_workers: 2
""",
    "pt_no_template": COMMON
    + """stage: pt
finetuning_type: lora
dataset: demo_text
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
bf16: true
""",
    "dpo": COMMON
    + """stage: dpo
finetuning_type: lora
dataset: demo_pairs
template: qwen3_nothink
pref_beta: 0.1
pref_loss: sigmoid
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
max_steps: 50
bf16: true
""",
    "qlora_bnb": COMMON
    + """stage: sft
finetuning_type: lora
quantization_bit: 4
quantization_method: bnb
dataset: demo_alpaca
template: qwen3_nothink
per_device_train_batch_size: 1
gradient_accumulation_steps: 4
bf16: true
""",
    # nothing about batch, learning rate, schedule, logging or precision: LF's defaults must come back
    "full_lf_defaults": COMMON
    + """stage: sft
finetuning_type: full
dataset: demo_alpaca
template: qwen3_nothink
""",
}


@pytest.fixture
def lf_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A LLaMA-Factory-like checkout (data/, examples/) as the working directory."""
    root = tmp_path / "LLaMA-Factory"
    (root / "data").mkdir(parents=True)
    (root / "examples" / "deepspeed").mkdir(parents=True)
    (root / "examples" / "train").mkdir()
    (root / "data" / "dataset_info.json").write_text(json.dumps(REGISTRY, indent=1))
    (root / "data" / "demo_alpaca.json").write_text(json.dumps([{"instruction": "Hi", "input": "", "output": "Hello"}]))
    chat = [
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "system": "Be brief"}
    ]
    (root / "data" / "demo_chat.json").write_text(json.dumps(chat))
    pairs = [{"conversations": [{"from": "human", "value": "Say hi"}], "chosen": {"from": "gpt", "value": "hi"},
              "rejected": {"from": "gpt", "value": "no"}}]  # fmt: skip
    (root / "data" / "demo_pairs.json").write_text(json.dumps(pairs))
    (root / "data" / "demo_text.jsonl").write_text('{"text": "Plain text to pre-train on."}\n')
    (root / "examples" / "deepspeed" / "ds_z3.json").write_text(json.dumps(ZERO3, indent=2))
    offload = {**ZERO3, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    (root / "examples" / "deepspeed" / "ds_z2_offload.json").write_text(json.dumps(offload))
    for name, text in GOOD.items():
        (root / "examples" / "train" / f"{name}.yaml").write_text(text.format(name=name))
    monkeypatch.chdir(root)
    return root


def _rendered_stage(source: Path, tmp: Path) -> tuple[Path, list[str]]:
    imported = import_config(source)
    recipe = tmp / f"{source.stem}.recipe.yml"
    recipe.write_text(check_imported(imported, source))
    rendering = render(load_recipe(str(recipe)), Target("cuda", 1), tmp / f"run-{source.stem}")
    rendering.write(tmp / f"run-{source.stem}")
    return tmp / f"run-{source.stem}" / rendering.stages[0].config, imported.notes


# Parses YAML pairs with LLaMA-Factory's own parser (OmegaConf.load + its HfArgumentParser, as
# `llamafactory-cli train` does) and resolves the datasets as its loader does; prints the differences.
_LF_JUDGE = r"""
import dataclasses, enum, json, os, sys
from pathlib import Path
from omegaconf import OmegaConf
import transformers.training_args as targs
targs.is_torch_bf16_gpu_available = lambda: True  # parse as on a GPU machine
from llamafactory.hparams.parser import _TRAIN_ARGS, _parse_train_args
from llamafactory.data.parser import get_dataset_list

def parse(path):
    out = {}
    for obj in _parse_train_args(OmegaConf.to_container(OmegaConf.load(Path(path).absolute()))):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name, None)
            out[f.name] = v.value if isinstance(v, enum.Enum) else v
    attrs = []
    for a in get_dataset_list(out["dataset"] or [], out["dataset_dir"]):
        d = dict(vars(a))
        d["dataset_name"] = str((Path(out["dataset_dir"]) / d["dataset_name"]).resolve())
        attrs.append(d)
    out["datasets"] = attrs
    if isinstance(out.get("deepspeed"), str):
        out["deepspeed"] = json.loads(Path(out["deepspeed"]).read_text())
    return out

pairs = json.loads(sys.argv[1])
result = {}
for name, (original, rendered) in pairs.items():
    a, b = parse(original), parse(rendered)
    result[name] = {k: [repr(a.get(k)), repr(b.get(k))] for k in set(a) | set(b) if repr(a.get(k)) != repr(b.get(k))}
defaults = {f.name: f.default for cls in _TRAIN_ARGS for f in dataclasses.fields(cls) if f.init}
print(json.dumps({"diffs": result, "defaults": {k: defaults.get(k) for k in json.loads(sys.argv[2])}}))
"""


@pytest.mark.skipif(find_spec("llamafactory") is None, reason="LLaMA-Factory is not installed (train extra)")
def test_examples_render_back_to_the_arguments_llamafactory_parses(lf_checkout: Path, tmp_path: Path):
    pairs, notes = {}, {}
    for name in GOOD:
        source = Path("examples/train") / f"{name}.yaml"  # relative, as users type it from the checkout root
        stage_file, notes[name] = _rendered_stage(source, tmp_path)
        pairs[name] = [str(source), str(stage_file)]
    done = subprocess.run(
        [sys.executable, "-c", _LF_JUDGE, json.dumps(pairs), json.dumps(sorted(LF_DEFAULTS))],
        capture_output=True, text=True, check=False, cwd=lf_checkout, env={"DISABLE_VERSION_CHECK": "1", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    judged = json.loads(done.stdout.strip().splitlines()[-1])
    assert judged["defaults"] == LF_DEFAULTS  # the defaults import fills in are LF's own
    for name, diff in judged["diffs"].items():
        left = {key: values for key, values in diff.items() if key not in POLICY}
        if name == "pt_no_template":
            assert left.pop("template") == ["None", "'empty'"]  # the one documented change, with its note
        if name == "qlora_bnb":
            assert left.pop("upcast_layernorm") == ["False", "True"]
        if "datasets" in left:  # lfw registers LF's full tag set for role/content data; these rows have none
            assert name == "sft_ds3" and "'system_tag': None" not in left.pop("datasets")[1]
        assert left == {}, name
    assert any(n.startswith('report_to: "wandb" dropped') for n in notes["sft_ds3"])
    assert any(n.startswith("overwrite_output_dir: true dropped") for n in notes["sft_ds3"])
    assert any(n.startswith("resume_from_checkpoint: null dropped") and "--resume" in n for n in notes["sft_ds3"])
    assert any("template: none given, so `empty`" in n for n in notes["pt_no_template"])
    assert any("upcast_layernorm" in n for n in notes["qlora_bnb"])


def test_paths_resolve_against_the_working_directory_not_the_yaml(lf_checkout: Path, tmp_path: Path):
    imported = import_config(Path("examples/train/sft_ds3.yaml"))
    recipe = imported.recipe
    assert recipe["hardware"]["deepspeed"] == "z3"
    assert recipe["stages"][0]["datasets"][0]["path"] == str(lf_checkout / "data" / "demo_alpaca.json")
    assert recipe["training"]["learning_rate"] == 2e-5  # OmegaConf reads 2e-5 as a number, like LF
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(UserError, match="cannot read the dataset registry"):
        import_config(lf_checkout / "examples/train/sft_ds3.yaml", workdir=other)


def _refusal(lf_checkout: Path, text: str) -> str:
    path = lf_checkout / "examples" / "train" / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        import_config(Path("examples/train/bad.yaml"))
    return info.value.render()


def test_each_unsupported_key_is_refused_with_its_line_and_reason(lf_checkout: Path):
    message = _refusal(
        lf_checkout,
        COMMON.format(name="bad")
        + "stage: sft\nfinetuning_type: oft\ndataset: hub_only,demo_subset\nray_num_workers: 4\n"
        "deepspeed: examples/deepspeed/ds_z2_offload.json\neval_dataset: demo_alpaca\ntensor_model_parallel_size: 2\n",
    )
    assert "bad.yaml:10 finetuning_type: 'oft' has no recipe method" in message
    assert "bad.yaml:12 ray_num_workers" in message and "does not run Ray" in message
    assert "'hub_only'" in message and "om_hub_url 'someone/some-data'" in message and "neither a local file" in message
    assert "'demo_subset'" in message and "uses num_samples" in message
    assert "ds_z2_offload.json is not one of the DeepSpeed configs lfw renders" in message
    assert "zero_optimization.offload_optimizer" in message
    assert "eval_dataset: lfw cannot pass this key through" in message
    assert "tensor_model_parallel_size: not an argument" in message and "USE_MCA=1" in message
    assert "template: missing" in message  # sft needs one; LF would guess it from the tokenizer


def test_hub_dataset_dir_and_v1_configs_are_refused(lf_checkout: Path):
    remote = GOOD["dpo"].format(name="r") + "dataset_dir: REMOTE:someone/demo_data\n"
    assert "'REMOTE:someone/demo_data' reads datasets from the hub" in _refusal(lf_checkout, remote)
    assert "LLaMA-Factory v1 config (USE_V1=1)" in _refusal(lf_checkout, "model: Qwen/Qwen3-0.6B\ntemplate: qwen3\n")
    assert "not a training YAML" in _refusal(lf_checkout, GOOD["dpo"].format(name="p").replace("do_train: true", ""))


def test_recipe_problems_name_the_llamafactory_key(lf_checkout: Path):
    source = lf_checkout / "examples" / "train" / "bad.yaml"
    source.write_text(GOOD["dpo"].format(name="b").replace("pref_beta: 0.1", "pref_beta: -1"))
    with pytest.raises(UserError) as info:
        check_imported(import_config(source), source)
    assert f"{source} pref_beta (recipe stages[0].pref_beta)" in info.value.render()


def test_formats_from_dataset_info_entries():
    assert dataset_format(REGISTRY["demo_alpaca"])[0] == "alpaca"
    assert dataset_format(REGISTRY["demo_chat"]) == (
        "sharegpt",
        {"columns": {"messages": "conversations", "system": "system"}},
    )
    assert dataset_format(REGISTRY["demo_pairs"])[0] == "preference_sharegpt"
    assert dataset_format(REGISTRY["demo_text"])[0] == "text"
    assert (
        dataset_format({"formatting": "sharegpt", "columns": {"messages": "m", "images": "images"}})[0] == "multimodal"
    )
    kto = {"formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"}}
    assert dataset_format(kto)[0] == "kto"


@pytest.mark.parametrize("gpus", [1, 4])
def test_global_batch_is_what_the_yaml_ran_with(lf_checkout: Path, tmp_path: Path, gpus: int):
    imported = import_config(Path("examples/train/sft_ds3.yaml"), gpus=gpus)
    recipe = tmp_path / "r.yml"
    recipe.write_text(check_imported(imported, Path("examples/train/sft_ds3.yaml")))
    config = yaml.safe_load(render(load_recipe(str(recipe)), Target("cuda", gpus), tmp_path / "run").files[-1].content)
    assert config["per_device_train_batch_size"] == 2 and config["gradient_accumulation_steps"] == 4
    assert imported.recipe["training"]["global_batch_size"] == 8 * gpus


def test_cli_from_the_checkout_root_writes_a_new_file_only(runner, lf_checkout: Path):
    out = lf_checkout / "recipe.yml"
    result = runner.invoke(cli, ["import", "examples/train/qlora_bnb.yaml", "-o", str(out)])
    assert result.exit_code == 0, result.output
    loaded = load_recipe(str(out))
    assert loaded.recipe.method.type == "qlora" and loaded.recipe.method.quantization.method == "bnb"
    again = runner.invoke(cli, ["import", "examples/train/qlora_bnb.yaml", "-o", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    refused = runner.invoke(cli, ["import", "examples/deepspeed/ds_z3.json"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
