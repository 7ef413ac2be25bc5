"""``lineage.json``: what went into an export, and the proof of which files lfw export wrote.

It says what went in (base, adapters in order, template, thinking mode, recipe hash, versions), so `lfw serve`
and `lfw eval` can use the same template settings later. An existing export is only replaced with ``--force``,
and only when its lineage.json shows lfw export wrote every file in it (never a run directory, a stage or
adapter folder, or a user's folder; see lfw.infra.owned).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lfw.infra.errors import Problem, UserError
from lfw.infra.owned import sha256_file, unlisted
from lfw.post.export.plan import ExportPlan

LINEAGE = "lineage.json"
LINEAGE_VERSION = 1
VERIFY_NAME = "verify.json"  # the verification worker's result, read and removed before lineage is written
CONFIG_NAME = "lfw_export.yaml"  # the rendered LLaMA-Factory export config, kept in a LoRA export


def _adapters(plan: ExportPlan) -> list[dict[str, Any]]:
    """Each adapter with the hash of its weights (None where the folder holds no safetensors)."""
    adapters = []
    for path in plan.adapters:
        weights = Path(path) / "adapter_model.safetensors"
        adapters.append({"path": path, "sha256": sha256_file(weights) if weights.is_file() else None})
    return adapters


def _run(plan: ExportPlan) -> dict[str, Any]:
    """The run and recipe the export comes from (all None for adapters given by hand outside a run)."""
    recipe_hash = sha256_file(plan.recipe_path) if plan.recipe_path and plan.recipe_path.is_file() else None
    return {
        "dir": str(plan.run_dir) if plan.run_dir else None,
        "stage": plan.stage,
        "recipe": str(plan.recipe_path) if plan.recipe_path else None,
        "recipe_sha256": recipe_hash,
    }


def build_lineage(
    plan: ExportPlan,
    verify: dict[str, Any] | None,
    seconds: float,
    stripped: list[str],
    files: list[str] | None = None,
) -> dict[str, Any]:
    """What went into the export; `files` lists what lfw wrote into a folder of its own (None: in place)."""
    from lfw.launch.manifest import now, package_versions

    template_check = (verify or {}).get("chat_template", {})
    return {
        "lineage_version": LINEAGE_VERSION,
        "created": now(),
        "model": str(plan.export_dir),
        "kind": "merged-lora" if plan.kind == "lora" else plan.kind,
        "base": plan.base,
        "trained_base": plan.trained_base,
        "trained_quantization": plan.trained_quantization,
        "adapters": _adapters(plan),
        "template": plan.template,
        "trust_remote_code": plan.trust_remote_code,
        "thinking": template_check.get("thinking"),  # None: not verified (it needs LLaMA-Factory's template)
        "enable_thinking": plan.enable_thinking,
        "chat_template_kwargs": template_check.get("kwargs", {}),
        "chat_template": {k: v for k, v in template_check.items() if k not in ("kwargs", "thinking")},
        "run": _run(plan),
        "versions": {"python": sys.version.split()[0], **package_versions()},
        "export": {
            "seconds": round(seconds, 1),
            "config": CONFIG_NAME if plan.kind == "lora" else None,
            "stripped_local_files_only": stripped,
            "files": files,
        },
        "verify": {k: v for k, v in (verify or {}).items() if k != "chat_template"} if verify else None,
        "notes": plan.notes,
    }


def write_lineage(folder: Path, lineage: dict[str, Any]) -> None:
    (folder / LINEAGE).write_text(json.dumps(lineage, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def listed_files(folder: Path) -> list[str] | None:
    """The files a folder's lineage.json says lfw export wrote there; None when it lists none (or is no lineage)."""
    try:
        files = json.loads((folder / LINEAGE).read_text(encoding="utf-8"))["export"]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, list) else None


def _refuse_foreign(final: Path) -> None:
    """Run directories, stage outputs and folders that lineage does not account for are never replaced."""
    fix = "choose a new folder with -o (it is created), or move the folder away yourself"
    if (final / "manifest.json").is_file():
        raise UserError([Problem(str(final), "is an lfw run directory; lfw export never replaces it", fix)])
    if any((final / name).is_file() for name in ("adapter_config.json", "trainer_state.json")):
        raise UserError([Problem(str(final), "holds a training stage's output; lfw export never replaces it", fix)])
    files = listed_files(final)
    if files is None:
        problem = "is not a folder lfw export wrote (no lineage.json listing its files), so --force does not replace it"
        raise UserError([Problem(str(final), problem, fix)])
    extra = unlisted(final, files)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise UserError(
            [
                Problem(
                    str(final),
                    f"holds files lfw export did not write ({shown}), so --force does not replace it",
                    "move those files out of the export, or choose a new folder with -o",
                )
            ]
        )


def check_replaceable(final: Path, force: bool) -> None:
    """An export goes to a new or empty folder; --force replaces only a folder that lfw export wrote.

    That folder's lineage.json lists every file the export put there: a run directory, a stage or adapter
    folder (exported in place or not), a folder holding anything else, or an export a user added files to
    is never replaced.
    """
    if not final.exists():
        return
    if not final.is_dir():
        raise UserError([Problem(str(final), "is a file, not an export folder", "choose a folder with -o")])
    if not any(final.iterdir()):
        return
    if not force:
        raise UserError(
            [
                Problem(
                    str(final),
                    "already exists; an export is never overwritten by default",
                    "add --force to replace it, or choose another folder with -o",
                )
            ]
        )
    _refuse_foreign(final)
