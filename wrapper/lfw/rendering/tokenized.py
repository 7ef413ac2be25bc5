"""Tokenize once: a content-keyed cache of LLaMA-Factory's tokenized datasets (its `tokenized_path`).

LLaMA-Factory 0.9.5 loads `tokenized_path` whenever the folder is non-empty ("Loaded tokenized dataset from ...",
ignoring every other data argument) and otherwise tokenizes and `save_to_disk`s into it, in place and not
atomically. So the folder name is a hash of everything that changes the tokens, and lfw fills it itself before a
stage starts: LF's own `get_dataset` in a worker process writes a temporary folder, lfw adds a completion marker
and renames it into place. A folder without the marker (half-written, or written by llamafactory-cli directly) is
never trusted: it is removed and tokenized again. A lock file serializes nodes that share the cache folder; the
rename alone keeps them correct where the file system has no locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lfw.infra.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from lfw.launch.target import Target
    from lfw.recipe.loader import LoadedRecipe

MARKER = "lfw-complete.json"
ENV_ROOT = "LFW_CACHE_DIR"
KEY_FORMAT = 1
# LF 0.9.5 DataArguments that do not change the tokens: names (datasets are keyed by content instead), the cache
# switches themselves, and the streaming buffer; preprocessing_num_workers is handled in cache_key.
_DATA_KEYS = (
    "template", "cutoff_len", "train_on_prompt", "mask_history", "streaming", "mix_strategy", "interleave_probs",
    "preprocessing_batch_size", "max_samples", "ignore_pad_token_for_loss", "val_size", "eval_on_each_dataset",
    "packing", "neat_packing", "tool_format", "default_system", "enable_thinking", "preserve_thinking", "media_dir",
)  # fmt: skip
# Model arguments that change what the tokenizer or the multimodal processor produce.
_TOKENIZER_KEYS = (
    "use_fast_tokenizer", "resize_vocab", "split_special_tokens", "add_tokens", "add_special_tokens",
    "new_special_tokens_config", "model_revision", "trust_remote_code", "image_max_pixels", "image_min_pixels",
    "image_do_pan_and_scan", "crop_to_patches", "video_max_pixels", "video_min_pixels", "video_fps", "video_maxlen",
    "use_audio_in_video", "audio_sampling_rate",
)  # fmt: skip
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")
# get_dataset's stage argument for each LF training stage (the workflows' calls).
_DATASET_STAGE = {"sft": "sft", "pt": "pt", "rm": "rm", "dpo": "rm", "kto": "kto", "ppo": "ppo"}
_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def cache_root(run_dir: Path) -> Path:
    """`$LFW_CACHE_DIR/tokenized`, else `<output_dir>/.tokenized` beside the runs (run_dir is
    `<output_dir>/<name>/<stamp>`): the disk that holds checkpoints, shared by the nodes of a run, not a home quota."""
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser().resolve() / "tokenized" if env else run_dir.parent.parent / ".tokenized"


def _digest_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path)).encode() if path.is_dir() else b"")
        with file.open("rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def _tokenizer_identity(model: str) -> Any:
    """Hashes of a local model folder's tokenizer and processor files (everything but weights and docs); a hub id,
    or an earlier stage's output that does not exist yet, is keyed by its name."""
    folder = Path(model)
    if not folder.is_dir():
        return model
    return {
        p.name: _digest_path(p)
        for p in sorted(folder.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and not p.name.endswith((*_WEIGHT_SUFFIXES, ".index.json", ".md"))
        and p.name not in ("LICENSE", "trainer_state.json", "training_args.bin")
    }


def _dataset_identity(entry: dict[str, Any]) -> dict[str, Any]:
    """A dataset_info.json entry with its file replaced by the content's hash: same data anywhere, same key."""
    entry = dict(entry)
    if "file_name" not in entry:  # hub data: its id, subset, split and folder (LF pins no revision)
        return entry
    path = Path(entry.pop("file_name"))
    entry["content"] = _digest_path(path) if path.exists() else str(path)
    return entry


def key_inputs(config: dict[str, Any], info: dict[str, Any], lf_version: str) -> dict[str, Any]:
    """Everything in a stage's train config that changes LLaMA-Factory's tokenized rows, location-free."""
    stage = config["stage"]
    packing = config.get("packing")
    packing = stage == "pt" if packing is None else packing  # LF's default (hparams/parser.py)
    data = {key: config[key] for key in _DATA_KEYS if config.get(key) is not None}
    data["packing"] = packing
    if packing or config.get("neat_packing"):  # packs within each worker's shard: the shard count moves bins
        data["preprocessing_num_workers"] = config.get("preprocessing_num_workers")
    if config.get("val_size") or config.get("streaming") or config.get("mix_strategy", "concat") != "concat":
        data["seed"] = config.get("seed", 42)  # LF splits (and interleaves) before it saves: the seed picks rows
    return {
        "format": KEY_FORMAT,
        "llamafactory": lf_version,
        "stage": _DATASET_STAGE.get(stage, stage),
        "data": data,
        "tokenizer": _tokenizer_identity(str(config["model_name_or_path"])),
        "tokenizer_args": {key: config[key] for key in _TOKENIZER_KEYS if config.get(key) is not None},
        "datasets": [_dataset_identity(info[name]) for name in _names(config.get("dataset"))],
        "eval_datasets": [_dataset_identity(info[name]) for name in _names(config.get("eval_dataset"))],
    }


def _names(value: Any) -> list[str]:
    return [name.strip() for name in str(value).split(",")] if value else []


def cache_key(config: dict[str, Any], info: dict[str, Any], lf_version: str) -> str:
    canonical = json.dumps(key_inputs(config, info, lf_version), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def is_complete(path: Path) -> bool:
    """Only a folder lfw renamed into place after LF finished saving carries the marker."""
    return (path / MARKER).is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`; where the file system has none (some Lustre mounts), no lock: the atomic
    rename still keeps the cache correct, the nodes just tokenize twice."""
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def worker_python() -> str:
    """The interpreter of the environment that has llamafactory-cli (runner.llamafactory_cli's rule)."""
    from lfw.launch.runner import llamafactory_cli

    beside = Path(llamafactory_cli()).parent / "python"
    return str(beside) if beside.is_file() else sys.executable


def prepare(config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> tuple[Path | None, bool]:
    """Make the tokenized folder of a rendered stage config exist and be complete: (folder, whether this call
    tokenized). (None, False) when the config has no tokenized_path. Raises UserError when LF's tokenization fails."""
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    target = config.get("tokenized_path")
    if not target:
        return None, False
    final = Path(target)
    if is_complete(final):
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f"{final.name}.lock"):
        if is_complete(final):  # another node or run finished it while this one waited
            return final, False
        if final.exists():  # no marker: half-written, or saved by llamafactory-cli itself; never trusted
            stale = final.with_name(f"{final.name}.stale-{uuid.uuid4().hex[:8]}")
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        temp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            _tokenize(config, temp, log_path, env)
            (temp / MARKER).write_text(json.dumps({"config": str(config_path)}) + "\n", encoding="utf-8")
            try:
                temp.rename(final)
            except OSError:  # lost a lock-free race: the winner's folder is as good as ours
                if not is_complete(final):
                    raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return final, True


def prepare_for_stage(config_path: Path, log_path: Path, env: dict[str, str], console: Console) -> None:
    """`lfw run` before each stage. A failure is only reported: LF then tokenizes in the stage itself and fails
    there with the same error in the stage's log, where the run records it."""
    console.print(f"tokenized data: checking {config_path.name} ...", highlight=False)
    try:
        folder, tokenized = prepare(config_path, log_path, env)
    except UserError as err:
        console.print(f"[yellow]warning:[/] {err.render()}", highlight=False)
        return
    if folder is not None:
        console.print(f"tokenized data: {'tokenized into' if tokenized else 'reusing'} {folder}", highlight=False)


def prepare_recipe(loaded: LoadedRecipe, target: Target, root: Path, console: Console) -> int:
    """`lfw data prepare`: render every stage as `lfw run` would into a hidden scratch folder beside the runs
    (same cache root, so the same keys) and tokenize each one. Returns how many stages were tokenized now."""
    from lfw.launch.runner import check_data, convert_folders
    from lfw.rendering.render import render

    to_convert = check_data(loaded)
    scratch = root / loaded.recipe.name / f".prepare-{uuid.uuid4().hex[:8]}"  # no manifest: never a run
    scratch.mkdir(parents=True)
    done = 0
    try:
        convert_folders(loaded, to_convert, scratch)
        rendering = render(loaded, target, scratch)
        rendering.write(scratch)
        for stage in rendering.stages:
            config = yaml.safe_load((scratch / stage.config).read_text(encoding="utf-8"))
            model = Path(str(config["model_name_or_path"]))
            if model.is_relative_to(scratch):  # trains on an earlier stage's output: its tokenizer comes from there
                console.print(f"stage {stage.name}: tokenized when it starts (it loads {model.name}'s tokenizer)")
                continue
            log = root / ".tokenized-logs" / f"{Path(config['tokenized_path']).name}.log"
            folder, tokenized = prepare(scratch / stage.config, log, dict(os.environ))
            done += tokenized
            state = "tokenized into" if tokenized else "already in"
            console.print(f"stage {stage.name}: {state} {folder}", highlight=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return done


def _tokenize(config: dict[str, Any], temp: Path, log_path: Path, env: dict[str, str] | None) -> None:
    """LF's own get_dataset in a fresh process, saving into `temp` (far lighter than `llamafactory-cli train`)."""
    request = json.dumps({"config": config, "tokenized_path": str(temp), "output_dir": str(temp) + ".out"})
    run_env = {k: v for k, v in (env if env is not None else os.environ).items() if k not in _DIST_ENV}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        done = subprocess.run(
            [worker_python(), "-m", "lfw.rendering.tokenized"], input=request.encode(),
            stdout=log, stderr=subprocess.STDOUT, env=run_env, check=False,
        )  # fmt: skip
    shutil.rmtree(str(temp) + ".out", ignore_errors=True)
    if done.returncode != 0 or not (temp / "dataset_dict.json").is_file():
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise UserError(f"LLaMA-Factory could not tokenize the data (exit {done.returncode}); see {log_path}:\n{tail}")


def _worker() -> None:
    """Parse the stage's data, model-tokenizer and seed arguments as `llamafactory-cli train` does, then tokenize
    and save with the stage's get_dataset call. Keys that only matter for training (DeepSpeed, precision,
    quantization, adapters, trackers) are left out so a GPU recipe tokenizes on a CPU login node."""
    from dataclasses import fields

    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, get_train_args
    from llamafactory.hparams.model_args import ProcessorArguments
    from llamafactory.model import load_tokenizer

    request = json.load(sys.stdin)
    config = request["config"]
    keep = {f.name for cls in (DataArguments, ProcessorArguments) for f in fields(cls)} | set(_TOKENIZER_KEYS)
    keep |= {"model_name_or_path", "cache_dir", "hf_hub_token", "stage", "seed"}
    args = {key: value for key, value in config.items() if key in keep}
    args.update(
        do_train=True,
        tokenized_path=request["tokenized_path"],
        output_dir=request["output_dir"],
        overwrite_cache=True,
        report_to="none",
    )
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    stage = _DATASET_STAGE[config["stage"]]
    get_dataset(template, model_args, data_args, training_args, stage=stage, **tokenizer_module)


if __name__ == "__main__":
    _worker()
