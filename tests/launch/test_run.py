"""`lfw run` before and around LLaMA-Factory: save_to_disk conversion, --resume's recipe check, dry runs.

A stand-in llamafactory-cli (LFW_LLAMAFACTORY_CLI) that fails at once gives real run directories and manifests in
milliseconds; test_e2e.py trains for real.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
import yaml

from lfw.cli import cli, main
from lfw.launch.runner import check_data, convert_folders
from lfw.launch.target import Target
from lfw.recipe.loader import load_recipe
from lfw.rendering.render import render
from tests.conftest import tiny_recipe


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def save_to_disk(folder: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    return folder


def test_save_to_disk_folders_with_one_name_stay_apart(tiny, tmp_path):
    """`a/train` and `b/train` were both written to data/train.jsonl: stage 1 trained on stage 2's rows."""
    pytest.importorskip("llamafactory")
    from llamafactory.data.parser import get_dataset_list

    first = save_to_disk(tmp_path / "a" / "train", [{"instruction": "first", "output": "one"}] * 3)
    second = save_to_disk(tmp_path / "b" / "train", [{"instruction": "second", "output": "two"}] * 5)
    recipe = tiny_recipe(tiny)
    recipe["stages"] = [
        {"stage": "sft", "datasets": [{"path": str(first), "format": "alpaca"}]},
        {"stage": "sft", "datasets": [{"path": str(second), "format": "alpaca"}]},
        {"stage": "sft", "datasets": [{"path": str(first), "format": "alpaca"}]},  # the same folder again
    ]
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(str(path))
    run_dir = tmp_path / "run"
    convert_folders(loaded, check_data(loaded), run_dir)
    rendering = render(loaded, Target("cpu", 1), run_dir)
    rendering.write(run_dir)
    assert sorted(p.name for p in (run_dir / "data").glob("*.jsonl")) == ["train.jsonl", "train_2.jsonl"]
    for stage, expected in (("1-sft", "first"), ("2-sft", "second"), ("3-sft", "first")):
        names = yaml.safe_load((run_dir / f"{stage}.yaml").read_text())["dataset"].split(",")
        # LLaMA-Factory's own parser resolves the names to files: each stage reads its own folder's rows.
        (attr,) = get_dataset_list(names, str(run_dir))
        rows = [json.loads(line) for line in Path(attr.dataset_name).read_text().splitlines()]
        assert {row["instruction"] for row in rows} == {expected}, stage


@pytest.fixture
def failing_cli(tmp_path, monkeypatch) -> Path:
    """A llamafactory-cli that exits 1 at once: a run directory and manifest, a failed stage, nothing trained."""
    exe = tmp_path / "bin" / "llamafactory-cli"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\nimport sys\nprint('stand-in trainer')\nsys.exit(1)\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("LFW_LLAMAFACTORY_CLI", str(exe))
    return exe


def test_resume_compares_the_resolved_recipe(tiny, tmp_path, failing_cli, capsys):
    base = tmp_path / "base" / "base.yml"
    base.parent.mkdir()
    base.write_text(yaml.safe_dump(tiny_recipe(tiny)))
    child = tmp_path / "child.yml"
    child.write_text(yaml.safe_dump({"extends": "base/base.yml", "name": "child"}))
    runs = ["--output-dir", str(tmp_path / "runs")]
    assert main(["run", str(child), *runs, "--set", "training.learning_rate=0.001"]) == 1
    (run_dir,) = (tmp_path / "runs" / "child").iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["recipe"]["resolved"]["training"]["learning_rate"] == 0.001
    assert manifest["recipe"]["digest"].startswith("sha256:")
    # The saved copy stands alone: it loads (from any folder) to the same resolved recipe.
    copy = load_recipe(str(run_dir / "recipe.yaml"))
    assert copy.resolved == manifest["recipe"]["resolved"] and copy.digest == manifest["recipe"]["digest"]
    assert "extends" not in (run_dir / "recipe.yaml").read_text().split("\n# Self-contained")[1]
    capsys.readouterr()

    # Another --set value: refused, naming the key and both values.
    assert main(["run", str(child), *runs, "--resume", "--set", "training.learning_rate=0.002"]) == 2
    assert "training.learning_rate: was 0.001, now 0.002" in flat(capsys.readouterr().err)
    # No --set at all: also a change (the run used one).
    assert main(["run", str(child), *runs, "--resume"]) == 2
    assert "training.learning_rate: was 0.001, now 0.005" in flat(capsys.readouterr().err)
    # An edited base recipe, the child untouched: refused too.
    edited = tiny_recipe(tiny)
    edited["training"]["cutoff_len"] = 64
    base.write_text(yaml.safe_dump(edited))
    assert main(["run", str(child), *runs, "--resume", "--set", "training.learning_rate=0.001"]) == 2
    assert "training.cutoff_len: was 128, now 64" in flat(capsys.readouterr().err)
    # As it was: resumed (the stand-in fails again, with its exit code).
    base.write_text(yaml.safe_dump(tiny_recipe(tiny)))
    assert main(["run", str(child), *runs, "--resume", "--set", "training.learning_rate=0.001"]) == 1
    assert json.loads((run_dir / "manifest.json").read_text())["resumed"]


def test_dry_run_previews_a_gpu_job_on_a_machine_without_gpus(tiny, tmp_path, runner, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, whatever this machine has
    recipe = tiny_recipe(tiny, hardware={"device": "auto", "deepspeed": "z2"})
    recipe["training"].update(global_batch_size=16, micro_batch_size=2)
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "runs"
    result = runner.invoke(cli, ["run", str(path), "--dry-run", "--gpus", "4", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "rendered for 4 GPUs, which are not visible here" in flat(result.output)
    for name in ("dataset_info.json", "ds_z2.json", "1-sft.yaml"):
        assert f"# ==> {name} <==" in result.output
    assert "gradient_accumulation_steps: 2" in result.output  # 16 = micro 2 x 4 GPUs x 2
    assert "NPROC_PER_NODE=4" in result.output and "use_cpu: false" in result.output
    assert not out.exists() or not any(out.rglob("*.yaml"))
    launched = runner.invoke(cli, ["run", str(path), "--gpus", "4", "--output-dir", str(out)])
    assert launched.exit_code == 2 and "none is visible" in flat(launched.output)


def test_cutoff_len_beyond_the_models_positions(tiny, tmp_path, runner):
    """The tiny model has 2048 positions: packing to 4096 is refused before launch, without packing a warning."""
    recipe = tiny_recipe(tiny)
    recipe["training"].update(cutoff_len=4096, packing=True)
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    refused = runner.invoke(cli, ["run", str(path), "--dry-run", "--output-dir", str(tmp_path / "r")])
    assert refused.exit_code == 2, refused.output
    assert "training.cutoff_len 4096 exceeds the model's 2048 positions" in flat(refused.output)
    assert "training.cutoff_len: 2048 or less, or llamafactory.rope_scaling: yarn" in flat(refused.output)
    recipe["training"]["packing"] = False
    path.write_text(yaml.safe_dump(recipe))
    warned = runner.invoke(cli, ["run", str(path), "--dry-run", "--output-dir", str(tmp_path / "r")])
    assert warned.exit_code == 0 and "warning" in warned.output and "2048 positions" in flat(warned.output)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cutoff_len", 10**13, "less than or equal to 4194304"),
        ("learning_rate", 1e308, "less than or equal to 1"),
        ("global_batch_size", 10**26, "less than or equal to 1048576"),
        ("micro_batch_size", 10**9, "less than or equal to 16384"),
    ],
)
def test_absurd_values_are_refused_at_load(tmp_path, key, value, message):
    from lfw.infra.errors import UserError
    from tests.conftest import minimal_recipe

    recipe = minimal_recipe()
    recipe["training"][key] = value
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError, match=message) as info:
        load_recipe(str(path))
    assert "recipe.yml:" in info.value.render() and f"training.{key}" in info.value.render()


def test_real_recipes_stay_within_the_bounds(tmp_path):
    from tests.conftest import minimal_recipe

    recipe = minimal_recipe(model={"path": "Qwen/Qwen3-14B", "template": "qwen3_nothink"})
    recipe["training"].update(cutoff_len=32768, global_batch_size=4096, micro_batch_size=64, learning_rate=1.0)
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    assert load_recipe(str(path)).recipe.training.cutoff_len == 32768


def test_resume_skips_a_checkpoint_cut_off_mid_save(tmp_path):
    """Trainer writes trainer_state.json last: a newer folder without it (Ctrl-C during a save) is not resumable."""
    from lfw.launch.runner import latest_checkpoint

    for step, complete in ((4, True), (12, True), (16, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-12"
    (tmp_path / "checkpoint-16" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-16"
    assert latest_checkpoint(tmp_path / "missing") is None
