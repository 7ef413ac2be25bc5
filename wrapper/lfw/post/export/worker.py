"""lfw export's verification worker: ``python -m lfw.post.export.worker verify MODEL_DIR --template T --out F``.

A fresh process loads the export with plain transformers (as users and evaluators will), checks that the
tokenizer's chat template renders the same prompt as the training template (finding the ``enable_thinking``
setting that does, or writing LLaMA-Factory's template when none does) and greedy-generates a few tokens.
Serving with a different template or thinking mode than training is the classic "worse after merge" bug.

Only the standard library is imported at the top: torch, transformers and LLaMA-Factory are imported inside
the functions that need them, so the package path to this module stays import-free.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBES: list[tuple[str | None, str]] = [
    (None, "What is 2 + 3?"),
    ("You are a helpful assistant.", "Name the capital of France."),
]
VERIFY_PROMPT = "What is the capital of France?"
# Candidate chat-template arguments, tried in order: the template's own default first.
_KWARGS: list[dict[str, Any]] = [{}, {"enable_thinking": False}, {"enable_thinking": True}]


@dataclass
class Training:
    """LLaMA-Factory's template as training used it, with the tokenizer it fixed and the probe prompts it builds."""

    template: Any
    tokenizer: Any
    expected: list[str]
    thinking: bool

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))


def training_prompts(
    model_dir: str, template_name: str, enable_thinking: bool | None, trust_remote_code: bool
) -> Training:
    """The probe conversations' prompts as LLaMA-Factory's training template encodes them."""
    from llamafactory.data.template import ReasoningTemplate, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    lf_tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    args: dict[str, Any] = {"template": template_name}
    if enable_thinking is not None:
        args["enable_thinking"] = enable_thinking
    template = get_template_and_fix_tokenizer(lf_tokenizer, DataArguments(**args))
    thinking = isinstance(template, ReasoningTemplate) and template.enable_thinking is not False
    training = Training(template, lf_tokenizer, [], thinking)
    for system, user in PROBES:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": ""}]
        prompt_ids, _ = template.encode_oneturn(lf_tokenizer, messages, system=system)
        training.expected.append(training.decode(prompt_ids))
    return training


def rendered_probes(tokenizer: Any, kwargs: dict[str, Any], decode: Callable[[list[int]], str]) -> list[str] | None:
    """The probe prompts as the tokenizer's chat template renders them (None: it cannot render them)."""
    texts = []
    for system, user in PROBES:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
        except Exception:  # a template without system support or no template at all: no match
            return None
        texts.append(decode(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return texts


def write_chat_template(model_dir: Path, jinja: str) -> None:
    """LLaMA-Factory's template as the export's chat_template.jinja, with no inline template shadowing it."""
    (model_dir / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    config_path = model_dir / "tokenizer_config.json"
    if config_path.is_file():  # an inline template there would shadow the .jinja file in older loaders
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.pop("chat_template", None) is not None:
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def probe_template(
    model_dir: str, tokenizer: Any, template_name: str, enable_thinking: bool | None, trust_remote_code: bool
) -> dict[str, Any]:
    """Compare the tokenizer's chat template with LLaMA-Factory's training template on probe conversations.

    Returns the chat-template kwargs that reproduce the training prompts. When none does, LLaMA-Factory's
    template (as jinja) is written into the export, so every server renders the training prompt.
    """
    training = training_prompts(model_dir, template_name, enable_thinking, trust_remote_code)
    expected, thinking = training.expected, training.thinking
    if tokenizer.chat_template:
        for kwargs in _KWARGS:
            if rendered_probes(tokenizer, kwargs, training.decode) == expected:
                return {"matches_training": True, "source": "tokenizer", "kwargs": kwargs, "thinking": thinking}
    own = rendered_probes(tokenizer, {}, training.decode) if tokenizer.chat_template else None
    failed = {"matches_training": False, "source": "tokenizer", "kwargs": {}, "thinking": thinking}
    try:
        jinja = training.template._get_jinja_template(training.tokenizer)
    except Exception as err:  # templates LLaMA-Factory cannot express as jinja
        problem = f"no template renders the training prompt and LLaMA-Factory's cannot be written: {err}"
        return {
            **failed,
            "problem": problem,
            "expected_prompt": expected[0],
            "rendered_prompt": own[0] if own else None,
        }
    tokenizer.chat_template = jinja
    if rendered_probes(tokenizer, {}, training.decode) != expected:
        problem = "LLaMA-Factory's own jinja does not reproduce its training prompt"
        return {**failed, "problem": problem, "expected_prompt": expected[0]}
    write_chat_template(Path(model_dir), jinja)
    return {
        "matches_training": True,
        "source": "llamafactory",
        "kwargs": {},
        "thinking": thinking,
        "replaced": "the tokenizer's chat template did not render the training prompt",
        "previous_prompt": own[0] if own else None,
    }


def verify_worker(
    model_dir: str,
    template_name: str,
    enable_thinking: bool | None,
    trust_remote_code: bool,
    max_new_tokens: int = 8,
) -> dict[str, Any]:
    """Load with plain transformers (as users and evaluators will), check the template, greedy-generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    template_check = probe_template(model_dir, tokenizer, template_name, enable_thinking, trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", trust_remote_code=trust_remote_code)
    model.to(device).eval()
    loaded = time.monotonic()
    messages = [{"role": "user", "content": VERIFY_PROMPT}]
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **template_check["kwargs"]
    )
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return {
        "loads": True,
        "device": device,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompt": VERIFY_PROMPT,
        "generated_tokens": int(new_tokens.shape[0]),
        "generated": tokenizer.decode(new_tokens, skip_special_tokens=False),
        "load_seconds": round(loaded - started, 1),
        "generate_seconds": round(time.monotonic() - loaded, 2),
        "chat_template": template_check,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lfw.post.export.worker", description="lfw export's verification worker"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="load an exported model, check its chat template, generate")
    check.add_argument("model_dir")
    check.add_argument("--template", required=True)
    check.add_argument("--enable-thinking", choices=("true", "false"), default=None)
    check.add_argument("--trust-remote-code", action="store_true")
    check.add_argument("--max-new-tokens", type=int, default=8)
    check.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    thinking = None if args.enable_thinking is None else args.enable_thinking == "true"
    result = verify_worker(args.model_dir, args.template, thinking, args.trust_remote_code, args.max_new_tokens)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("loads", "generated_tokens", "generated")}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
