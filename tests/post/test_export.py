"""`lfw export`: a real merge of a tiny LoRA SFT+DPO run on the CPU, and the planning rules around it.

The slow test trains the tiny model (SFT, then DPO on a new adapter), exports the run with `lfw export` and
checks what a user relies on: the merged model loads and generates, lineage names the adapters in merge
order, the tokenizer files carry no machine-specific flags, and an export is never silently overwritten.
The fast tests build run directories from real renderings (no training) to pin the planning rules:
QLoRA merges into the unquantized base, stacked adapters follow LLaMA-Factory's loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest
import yaml

from lfw.cli import main
from lfw.infra.errors import UserError
from lfw.launch.target import Target
from lfw.post.export.lineage import LINEAGE
from lfw.post.export.merge import render_export_config, strip_machine_keys
from lfw.post.export.plan import adapter_stack, plan_from_adapters, plan_from_run
from lfw.post.export.run import export
from lfw.recipe.loader import load_recipe
from lfw.rendering.render import render
from tests.conftest import REPO, exported_tiny_run


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    return exported_tiny_run(tmp_path_factory, tiny)


@pytest.mark.slow
def test_exported_lora_run_loads_generates_and_records_lineage(exported):
    run_dir, export_dir, base = exported
    lineage = json.loads((export_dir / LINEAGE).read_text())
    assert lineage["kind"] == "merged-lora" and lineage["base"] == str(base.resolve())
    assert [a["path"] for a in lineage["adapters"]] == [str(run_dir / "1-sft"), str(run_dir / "2-dpo")]
    assert all(a["sha256"].startswith("sha256:") for a in lineage["adapters"])
    assert lineage["template"] == "qwen3_nothink" and lineage["thinking"] is False
    assert lineage["chat_template"]["matches_training"] and lineage["chat_template_kwargs"] == {}
    recipe_hash = "sha256:" + hashlib.sha256((run_dir / "recipe.yaml").read_bytes()).hexdigest()
    assert lineage["run"] == {
        "dir": str(run_dir),
        "stage": "2-dpo",
        "recipe": str(run_dir / "recipe.yaml"),
        "recipe_sha256": recipe_hash,
    }
    assert lineage["versions"]["llamafactory"] == "0.9.5" and lineage["versions"]["transformers"]
    assert lineage["verify"]["loads"] and lineage["verify"]["generated_tokens"] > 0
    # The LLaMA-Factory config kept with the export lists the adapters in merge order, no quantization.
    config = yaml.safe_load((export_dir / "lfw_export.yaml").read_text())
    assert config["adapter_name_or_path"] == f"{run_dir / '1-sft'},{run_dir / '2-dpo'}"
    assert "quantization_bit" not in config and config["export_dir"] == str(export_dir)
    for name in ("tokenizer_config.json", "config.json"):
        assert "local_files_only" not in json.loads((export_dir / name).read_text())
    assert not any(p.name.startswith(".export") for p in run_dir.iterdir()), "staging folder left behind"

    # Independently of lfw's own check: plain transformers loads it, the adapters changed the weights,
    # and greedy decoding reproduces what the verification recorded.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], original.state_dict()[name])
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": lineage["verify"]["prompt"]}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = merged.generate(**inputs, max_new_tokens=lineage["verify"]["generated_tokens"], do_sample=False)
    generated = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=False)
    assert generated == lineage["verify"]["generated"]


@pytest.mark.slow
def test_export_is_never_overwritten_and_an_earlier_stage_exports_alone(exported, capsys):
    run_dir, export_dir, _ = exported
    before = (export_dir / LINEAGE).read_text()
    assert main(["export", str(run_dir)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (export_dir / LINEAGE).read_text() == before
    # The SFT stage alone: its own default folder, only its adapter.
    assert main(["export", str(run_dir), "--stage", "sft", "--no-verify"]) == 0
    lineage = json.loads((run_dir / "export-1-sft" / LINEAGE).read_text())
    assert [a["path"] for a in lineage["adapters"]] == [str(run_dir / "1-sft")] and lineage["verify"] is None


# ------------------------------------------------------------------------------ planning, no training


def fake_run(tmp_path: Path, overrides: list[str], model: str = "Qwen/Qwen3-4B") -> Path:
    """A finished run directory as `lfw run` leaves it, from a real rendering; adapters are stand-ins."""
    loaded = load_recipe(str(REPO / "recipes" / "tiny_cpu_demo.yml"), [f"model.path={model}", *overrides])
    run_dir = tmp_path / "run"
    rendering = render(loaded, Target("cpu", 1), run_dir)
    rendering.write(run_dir)
    (run_dir / "recipe.yaml").write_text(loaded.path.read_text())
    stages = []
    for stage in rendering.stages:
        stage.output_dir.mkdir()
        (stage.output_dir / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": model}))
        stages.append({"name": stage.name, "config": stage.config, "output_dir": str(stage.output_dir), "status": "ok"})
    (run_dir / "manifest.json").write_text(json.dumps({"stages": stages, "status": "ok"}))
    return run_dir


def test_qlora_exports_into_the_unquantized_base(tmp_path):
    run_dir = fake_run(tmp_path, ["method.type=qlora"])
    trained = yaml.safe_load((run_dir / "2-dpo.yaml").read_text())
    assert trained["quantization_bit"] == 4  # training was 4-bit ...
    plan = plan_from_run(run_dir)
    config = yaml.safe_load(render_export_config(plan))
    assert "quantization_bit" not in config and config["model_name_or_path"] == "Qwen/Qwen3-4B"  # ... the merge not
    # QLoRA's DPO stage kept training the SFT adapter (no create_new_adapter): its output already holds both.
    assert config["adapter_name_or_path"] == str(run_dir / "2-dpo")
    assert config["finetuning_type"] == "lora" and config["template"] == "qwen3_nothink"
    assert "trust_remote_code" not in config
    assert plan.trained_quantization == {"bits": 4, "method": "bnb"}


def test_lora_stacks_adapters_in_training_order(tmp_path):
    run_dir = fake_run(tmp_path, [])
    config = yaml.safe_load(render_export_config(plan_from_run(run_dir)))
    assert config["adapter_name_or_path"] == f"{run_dir / '1-sft'},{run_dir / '2-dpo'}"
    assert plan_from_run(run_dir, stage="1").adapters == [str(run_dir / "1-sft")]
    assert plan_from_run(run_dir, stage="dpo").export_dir == run_dir / "export"
    assert plan_from_run(run_dir, stage="1-sft").export_dir == run_dir / "export-1-sft"


def test_adapter_stack_follows_llamafactory_loader():
    # create_new_adapter: everything listed is merged, the stage's new adapter goes on top.
    assert adapter_stack({"adapter_name_or_path": "a,b", "create_new_adapter": True, "output_dir": "c"}) == [
        "a",
        "b",
        "c",
    ]
    # otherwise the last listed adapter was trained further and saved as the stage output.
    assert adapter_stack({"adapter_name_or_path": "a,b", "output_dir": "c"}) == ["a", "c"]
    assert adapter_stack({"output_dir": "c"}) == ["c"]


def test_full_run_is_exported_in_place(tmp_path):
    run_dir = fake_run(tmp_path, ["method.type=full"])
    plan = plan_from_run(run_dir)
    assert plan.kind == "full" and plan.in_place and plan.export_dir == run_dir / "2-dpo" and not plan.adapters
    with pytest.raises(UserError, match="no base"):
        plan_from_run(run_dir, base="other/model")


def test_unfinished_stage_and_bad_stage_are_refused(tmp_path):
    run_dir = fake_run(tmp_path, [])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["stages"][1]["status"] = "failed"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="--stage 1-sft"):
        plan_from_run(run_dir)
    assert plan_from_run(run_dir, stage="1-sft").adapters == [str(run_dir / "1-sft")]
    with pytest.raises(UserError, match="use one of: 1-sft, 2-dpo"):
        plan_from_run(run_dir, stage="kto")


def test_adapter_mode_finds_base_and_template_or_asks(tmp_path):
    run_dir = fake_run(tmp_path, [])
    plan = plan_from_adapters([str(run_dir / "1-sft")])  # inside a run: template from its stage config
    assert plan.base == "Qwen/Qwen3-4B" and plan.template == "qwen3_nothink"
    assert plan.export_dir == run_dir / "1-sft-merged"
    loose = tmp_path / "loose"
    shutil.copytree(run_dir / "1-sft", loose)
    with pytest.raises(UserError, match="--template"):
        plan_from_adapters([str(loose)])
    with pytest.raises(UserError, match="adapter_config.json"):
        plan_from_adapters([str(tmp_path)], base="x", template="qwen3")


def test_prequantized_base_is_refused(tmp_path):
    run_dir = fake_run(tmp_path, [])
    quantized = tmp_path / "q"
    quantized.mkdir()
    (quantized / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq"}}))
    plan = plan_from_run(run_dir, base=str(quantized))
    with pytest.raises(UserError, match="gptq checkpoint"):
        export(plan, verify=False)


FAKE_EXPORT_CLI = """\
#!{python}
import pathlib, sys
out = pathlib.Path(sys.argv[-1].split("=", 1)[1])
(out / "config.json").write_text("{{}}")
(out / "tokenizer_config.json").write_text('{{"local_files_only": true, "eos_token": "x"}}')
"""


@pytest.fixture
def fake_export_cli(tmp_path, monkeypatch) -> None:
    """A stand-in llamafactory-cli: checks lfw's folder handling (staging, --force, cleanup) in milliseconds."""
    cli = tmp_path / "llamafactory-cli"
    cli.write_text(FAKE_EXPORT_CLI.format(python=sys.executable))
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("LFW_LLAMAFACTORY_CLI", str(cli))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: what must survive a refused export untouched."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_force_replaces_only_after_the_new_export_is_complete(tmp_path, fake_export_cli):
    run_dir = fake_run(tmp_path, [])
    first = export(plan_from_run(run_dir), verify=False)
    target = run_dir / "export"
    assert json.loads((target / "tokenizer_config.json").read_text()) == {"eos_token": "x"}
    assert first["export"]["stripped_local_files_only"] == ["tokenizer_config.json"]
    assert first["export"]["files"] == sorted(p.name for p in target.iterdir())  # lineage lists what it wrote
    with pytest.raises(UserError, match="--force"):
        export(plan_from_run(run_dir), verify=False)
    (target / "config.json").write_text("old")
    second = export(plan_from_run(run_dir), verify=False, force=True)
    assert (target / "config.json").read_text() == "{}" and second["created"] >= first["created"]
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []
    # An export is lfw's to replace, but not while it is the base this merge reads.
    with pytest.raises(UserError, match="holds a model this export reads"):
        export(plan_from_run(run_dir, base=str(target)), verify=False, force=True)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("run", "is an lfw run directory"),  # -o RUN
        ("run/1-sft", "holds a training stage's output"),  # -o RUN/1-sft: the SFT adapter
        ("mine", "is not a folder lfw export wrote"),  # a user's folder
        ("run/export", "holds files lfw export did not write \\(notes.txt\\)"),  # an export a user added to
    ],
)
def test_force_never_replaces_what_lfw_export_did_not_write(tmp_path, fake_export_cli, capsys, where, reason):
    run_dir = fake_run(tmp_path, [])
    assert main(["export", str(run_dir), "--no-verify"]) == 0
    (run_dir / "export" / "notes.txt").write_text("the user's notes")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    before = tree(tmp_path)
    capsys.readouterr()
    assert main(["export", str(run_dir), "--no-verify", "-o", str(tmp_path / where), "--force"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / where}: " in err and re.search(reason, err) and "-o" in err and "Traceback" not in err
    assert tree(tmp_path) == before  # every byte still there, and no staging folder left behind


def test_force_never_replaces_a_stage_exported_in_place(tmp_path, fake_export_cli):
    """A full run's stage folder carries lineage.json after an in-place export, but it is no export folder."""
    run_dir = fake_run(tmp_path, ["method.type=full"])
    for stage in ("1-sft", "2-dpo"):  # a full stage's output is a model, not an adapter
        (run_dir / stage / "adapter_config.json").unlink()
        (run_dir / stage / "config.json").write_text("{}")
    export(plan_from_run(run_dir, stage="1-sft"), verify=False)
    assert json.loads((run_dir / "1-sft" / LINEAGE).read_text())["export"]["files"] is None
    before = tree(run_dir)
    with pytest.raises(UserError, match="not a folder lfw export wrote"):
        export(plan_from_run(run_dir, output=run_dir / "1-sft"), verify=False, force=True)
    assert tree(run_dir) == before
    # A copy of the last stage into a folder of its own can be replaced, and is.
    copy = export(plan_from_run(run_dir, output=tmp_path / "full"), verify=False)
    assert "config.json" in copy["export"]["files"]
    export(plan_from_run(run_dir, output=tmp_path / "full"), verify=False, force=True)


def test_strip_machine_keys_leaves_other_files_alone(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"local_files_only": True, "a": 1}))
    (tmp_path / "config.json").write_text(json.dumps({"b": 2}))
    assert strip_machine_keys(tmp_path) == ["tokenizer_config.json"]
    assert json.loads((tmp_path / "config.json").read_text()) == {"b": 2}


def test_export_help_is_fast_and_light():
    """`lfw export --help` must not import torch or transformers (the CLI's promise)."""
    code = (
        "import sys; from lfw.cli import main; main(['export', '--help']); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0, done.stderr


PARSE_INFER = """
import json, sys, yaml
from llamafactory.hparams import get_infer_args
results = []
for path in sys.argv[1:]:
    model_args = get_infer_args(yaml.safe_load(open(path)))[0]
    results.append([model_args.adapter_name_or_path, model_args.quantization_bit])
print("RESULT=" + json.dumps(results))
"""


@pytest.mark.slow
def test_llamafactory_parser_accepts_the_export_configs(tmp_path):
    """The honest oracle for export configs: LLaMA-Factory's own get_infer_args, as `llamafactory-cli export`."""
    import subprocess

    configs, expected = [], []
    for method in ("lora", "qlora"):
        run_dir = fake_run(tmp_path / method, [f"method.type={method}"])
        config = tmp_path / f"{method}.yaml"
        config.write_text(render_export_config(plan_from_run(run_dir)))
        configs.append(str(config))
        adapters = [str(run_dir / "1-sft"), str(run_dir / "2-dpo")] if method == "lora" else [str(run_dir / "2-dpo")]
        expected.append([adapters, None])  # no quantization in the merge, even for QLoRA
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PARSE_INFER, *configs], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.split("RESULT=")[-1]) == expected
