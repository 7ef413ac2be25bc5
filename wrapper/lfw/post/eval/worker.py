"""The generation worker of `lfw eval`: ``python -m lfw.post.eval.worker --backend vllm|hf ...``.

Why a separate process: vLLM pins its own torch and transformers, which conflict with LLaMA-Factory's, so
it lives in its own environment and can only be reached as a subprocess; and even with the transformers
backend, keeping torch out of the lfw process keeps the CLI light and lets a crash or an out-of-memory in
generation end one process, not lfw. So this module imports only the standard library at the top: it runs
under the vLLM interpreter, where nothing of lfw's own dependencies need be installed.

Input: JSONL requests ``{"id", "group", "messages", "continuations": [...] | null, "max_tokens"}``.
Output: JSONL in the same order ``{"id", "prompt", "prediction", "prompt_tokens", "completion_tokens",
"finish_reason", "choice_logprobs"}`` and a stats JSON (load time, per-group generation time and token
counts, resolved dtype, versions), from which lfw computes samples/s and tokens/s.

Both backends render the prompt with the model's own chat template (from the adapter folder when it has
one: LLaMA-Factory saves the training template there) into token ids once, here, and feed the same ids to
the engine, so vLLM and transformers see identical prompts. Decoding is greedy and seeded. Continuation
log-probabilities (multiple choice) are the summed log-probabilities of the continuation's tokens after
the prompt: vLLM's ``prompt_logprobs``, or one forward pass with transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lfw.infra.versions import installed_version, installed_versions  # standard library only, like this module

T = TypeVar("T")
PROGRESS = "lfw-progress"  # stderr lines starting with this are shown by lfw; the rest goes to the log


def progress(message: str) -> None:
    print(f"{PROGRESS} {message}", file=sys.stderr, flush=True)


def read_requests(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def tokenizer_source(model: str, adapter: str | None) -> str:
    """The adapter folder when it carries a tokenizer (LLaMA-Factory saves the training template there)."""
    if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
        return adapter
    return model


def model_max_length(model: str) -> int | None:
    """max_position_embeddings from config.json (None when unknown)."""
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config)
    value = config.get("max_position_embeddings")
    return int(value) if value else None


class Renderer:
    """Turns chat messages into prompt token ids with the tokenizer's chat template."""

    def __init__(self, tokenizer: Any, template_kwargs: dict[str, Any]) -> None:
        self.tokenizer = tokenizer
        self.template_kwargs = template_kwargs
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def render(self, messages: list[dict[str, str]]) -> str:
        if not self.has_template:  # a base model without a chat template: plain text, answer on a new line
            return "\n\n".join(m["content"] for m in messages) + "\n"
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **self.template_kwargs
        )

    def encode(self, text: str) -> list[int]:
        # The template already holds any BOS/special tokens: adding them again would change the prompt.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def prepare(requests: list[dict[str, Any]], renderer: Renderer, max_len: int | None) -> None:
    """Render every request in place: prompt text, prompt ids, continuation ids, a max_tokens that fits."""
    for req in requests:
        req["prompt"] = renderer.render(req["messages"])
        req["prompt_ids"] = renderer.encode(req["prompt"])
        req["continuation_ids"] = [renderer.encode(c) for c in req.get("continuations") or []]
        if max_len:
            room = max_len - len(req["prompt_ids"])
            longest = max((len(c) for c in req["continuation_ids"]), default=0)
            if room <= max(1, longest):
                req["error"] = f"prompt of {len(req['prompt_ids'])} tokens does not fit max length {max_len}"
            req["max_tokens"] = max(0, min(int(req["max_tokens"]), room))


def warm_up(backend: Any, requests: list[dict[str, Any]]) -> None:
    """Tiny requests before the clock starts: first-call costs (kernel selection, compilation, caches) belong
    to loading, not to the throughput of whichever benchmark happens to come first."""
    usable = [r for r in requests if "error" not in r]
    if usable:
        backend.generate([{**usable[0], "max_tokens": min(2, max(1, usable[0]["max_tokens"]))}])
    scored = next((r for r in usable if r["continuation_ids"]), None)
    if scored is not None:
        backend.loglik([dict(scored)])


def groups_of(requests: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Request indices per group (benchmark), in first-seen order, so each benchmark is timed alone."""
    groups: dict[str, list[int]] = {}
    for index, req in enumerate(requests):
        groups.setdefault(req.get("group", ""), []).append(index)
    return groups


# --------------------------------------------------------------------------------------------------------
# vLLM


class VllmBackend:
    """Offline vLLM (``LLM.generate``); greedy, seeded, prompts given as token ids."""

    name = "vllm"

    def __init__(self, args: argparse.Namespace, max_len: int | None) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU; ignored on GPUs
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        self.SamplingParams, self.TokensPrompt = SamplingParams, TokensPrompt
        kwargs: dict[str, Any] = {
            "model": args.model,
            "tokenizer": tokenizer_source(args.model, args.adapter),
            "seed": args.seed,
            "dtype": vllm_dtype(args.dtype),
            "tensor_parallel_size": args.tensor_parallel_size,
            "enforce_eager": args.enforce_eager,
        }
        if max_len:
            kwargs["max_model_len"] = max_len
        self.lora = None
        if args.adapter:
            from vllm.lora.request import LoRARequest

            rank = json.loads((Path(args.adapter) / "adapter_config.json").read_text()).get("r", 16)
            # max_logprobs: room for every option letter of a question in one next-token request.
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=lora_rank(rank), max_logprobs=32)
            self.lora = LoRARequest("adapter", 1, str(Path(args.adapter).resolve()))
        self.llm = LLM(**kwargs)
        self.dtype = str(self.llm.llm_engine.model_config.dtype).replace("torch.", "")
        self.seed = args.seed

    def generate(self, requests: list[dict[str, Any]]) -> None:
        prompts = [self.TokensPrompt(prompt_token_ids=r["prompt_ids"]) for r in requests]
        params = [self.SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], seed=self.seed) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        for req, out in zip(requests, outputs, strict=True):
            completion = out.outputs[0]
            req["prediction"] = completion.text
            req["completion_tokens"] = len(completion.token_ids)
            req["finish_reason"] = completion.finish_reason

    def loglik(self, requests: list[dict[str, Any]]) -> None:
        if self.lora is not None:
            # vllm-cpu 0.32 crashes computing prompt logprobs through a LoRA adapter (its CPU LoRA
            # logits kernel assumes one row per request), so adapters take the next-token route.
            self._loglik_next_token(requests)
            return
        flat = [(r, c) for r in requests for c in r["continuation_ids"]]
        prompts = [self.TokensPrompt(prompt_token_ids=r["prompt_ids"] + c) for r, c in flat]
        params = self.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, seed=self.seed)
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        for req in requests:
            req["choice_logprobs"] = []
        for (req, cont), out in zip(flat, outputs, strict=True):
            start = len(req["prompt_ids"])
            per_token = out.prompt_logprobs[start : start + len(cont)]
            req["choice_logprobs"].append(sum(lp[tok].logprob for lp, tok in zip(per_token, cont, strict=True)))

    def _loglik_next_token(self, requests: list[dict[str, Any]]) -> None:
        """Continuation log-probabilities from one-token generations: for each distinct prefix (prompt plus
        the first k continuation tokens) the log-probability of the token that follows, asked for with
        ``logprob_token_ids``. Option letters share their prefix, so one request per question scores all."""
        wanted: dict[tuple[int, ...], set[int]] = {}
        for req in requests:
            for cont in req["continuation_ids"]:
                for k, token in enumerate(cont):
                    wanted.setdefault(tuple(req["prompt_ids"] + cont[:k]), set()).add(token)
        prefixes = list(wanted)
        prompts = [self.TokensPrompt(prompt_token_ids=list(p)) for p in prefixes]
        params = []
        for prefix in prefixes:
            ids = sorted(wanted[prefix])  # vLLM wants logprobs == len(logprob_token_ids) when both are given
            params.append(
                self.SamplingParams(
                    temperature=0.0, max_tokens=1, seed=self.seed, logprobs=len(ids), logprob_token_ids=ids
                )
            )
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        table = {p: out.outputs[0].logprobs[0] for p, out in zip(prefixes, outputs, strict=True)}
        for req in requests:
            req["choice_logprobs"] = [
                sum(table[tuple(req["prompt_ids"] + cont[:k])][tok].logprob for k, tok in enumerate(cont))
                for cont in req["continuation_ids"]
            ]

    def versions(self) -> dict[str, str | None]:
        return {"vllm": installed_version("vllm") or installed_version("vllm-cpu"), "torch": installed_version("torch")}


def vllm_dtype(requested: str) -> str:
    """vLLM's dtype, except that ``auto`` means float32 on an x86 CPU without bf16 instructions.

    vLLM's auto picks bfloat16 on every CPU; without AVX512-BF16 or AMX each bf16 matmul is emulated. Measured
    on this project's AVX2 machine (26M-parameter Qwen3, 128 prompts x 64 tokens): 126 tokens/s in bf16,
    726 in float32. Where the CPU has the instructions, and on GPUs, vLLM's choice stands.
    """
    if requested != "auto":
        return requested
    from vllm.platforms import current_platform

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return requested
    flags = set(cpuinfo.split())
    x86 = "avx2" in flags or "sse4_2" in flags
    if current_platform.is_cpu() and x86 and not flags & {"avx512_bf16", "amx_bf16"}:
        return "float32"
    return requested


def lora_rank(rank: int) -> int:
    """vLLM accepts a fixed set of max_lora_rank values: the smallest one that holds the adapter's rank."""
    allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    return next((r for r in allowed if r >= rank), allowed[-1])


# --------------------------------------------------------------------------------------------------------
# transformers


class HfBackend:
    """transformers batched greedy generation (left padding) and a forward pass for continuations."""

    name = "hf"

    def __init__(self, args: argparse.Namespace, tokenizer: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM, set_seed

        set_seed(args.seed)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.dtype != "auto":
            dtype = getattr(torch, args.dtype)
        elif self.device == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32  # CPU: bf16 matmuls are slower here and would only add rounding noise
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        if args.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, args.adapter)
            model = model.merge_and_unload()  # same numbers, plain forward passes
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = args.batch_size
        self.dtype = str(dtype).replace("torch.", "")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if pad is not None else 0
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        self.eos = eos

    def _batches(self, items: list[T], length: Callable[[T], int]) -> list[list[T]]:
        # Longest first so padding stays small and an out-of-memory shows up in the first batch.
        ordered = sorted(items, key=length, reverse=True)
        return [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]

    def generate(self, requests: list[dict[str, Any]]) -> None:
        torch = self.torch
        done = 0
        for batch in self._batches(requests, lambda r: len(r["prompt_ids"])):
            width = max(len(r["prompt_ids"]) for r in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, req in enumerate(batch):  # left padding: every prompt ends where generation starts
                n = len(req["prompt_ids"])
                ids[row, width - n :] = torch.tensor(req["prompt_ids"])
                mask[row, width - n :] = 1
            max_new = max(r["max_tokens"] for r in batch)
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=max(1, max_new),
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos,
                )
            for row, req in enumerate(batch):
                # Greedy decoding of a longer budget starts with the shorter one: cut to this request's.
                new = out[row, width:].tolist()[: req["max_tokens"]]
                stop = next((i for i, tok in enumerate(new) if tok in self.eos), None)
                kept = new if stop is None else new[: stop + 1]  # the stop token counts, as in vLLM
                req["prediction"] = self.tokenizer.decode(kept, skip_special_tokens=True)
                req["completion_tokens"] = len(kept)
                req["finish_reason"] = "length" if stop is None else "stop"
            done += len(batch)
            progress(f"generated {done}/{len(requests)}")

    def loglik(self, requests: list[dict[str, Any]]) -> None:
        torch = self.torch
        flat = [(r, i, r["prompt_ids"] + c, len(c)) for r in requests for i, c in enumerate(r["continuation_ids"])]
        for req in requests:
            req["choice_logprobs"] = [0.0] * len(req["continuation_ids"])
        for batch in self._batches(flat, lambda x: len(x[2])):
            width = max(len(seq) for _, _, seq, _ in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, _, seq, _) in enumerate(batch):  # right padding: positions match the unpadded run
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, (req, index, seq, n) in enumerate(batch):
                positions = range(len(seq) - n, len(seq))  # token at p is predicted by the logits at p - 1
                req["choice_logprobs"][index] = float(sum(logprobs[row, p - 1, seq[p]] for p in positions))

    def versions(self) -> dict[str, str | None]:
        return installed_versions(("transformers", "torch", "peft"))


# --------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lfw.post.eval.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("vllm", "hf"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=16, help="hf backend: prompts per batch")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--enforce-eager", action="store_true", help="vllm: no graph capture or compilation")
    parser.add_argument("--chat-template-kwargs", default="{}", help="JSON passed to apply_chat_template")
    return parser.parse_args(argv)


def context_limit(args: argparse.Namespace, requests: list[dict[str, Any]], limit: int | None) -> int | None:
    """The context vLLM is started with: only as long as this run needs unless --max-model-len says otherwise.

    On a CPU the KV cache is small, and a model's full context (40k tokens for Qwen3) may not fit in it.
    """
    if args.backend != "vllm" or args.max_model_len:
        return limit
    needed = max(
        len(r["prompt_ids"]) + max(r["max_tokens"], max(map(len, r["continuation_ids"]), default=0)) for r in requests
    )
    return min(limit, needed + 8) if limit else needed + 8


def run_group(backend: Any, requests: list[dict[str, Any]], indices: list[int]) -> dict[str, Any]:
    """Generate (and score continuations) for one benchmark's requests; returns its timings and token counts."""
    todo = [requests[i] for i in indices if "error" not in requests[i]]
    for req in (requests[i] for i in indices if "error" in requests[i]):
        req.update(prediction="", completion_tokens=0, finish_reason="error")
    started = time.perf_counter()
    if todo:
        backend.generate(todo)
    generated = time.perf_counter()
    scored = [r for r in todo if r["continuation_ids"]]
    if scored:
        backend.loglik(scored)
    finished = time.perf_counter()
    return {
        "requests": len(indices),
        "generate_seconds": round(generated - started, 4),
        "loglik_seconds": round(finished - generated, 4),
        "prompt_tokens": sum(len(requests[i]["prompt_ids"]) for i in indices),
        "completion_tokens": sum(requests[i]["completion_tokens"] for i in indices),
    }


def write_predictions(path: Path, requests: list[dict[str, Any]]) -> None:
    """The answers as JSONL, in the order of the requests."""
    with path.open("w", encoding="utf-8") as handle:
        for req in requests:
            row = {k: req.get(k) for k in ("id", "prompt", "prediction", "completion_tokens", "finish_reason")}
            row["prompt_tokens"] = len(req["prompt_ids"])
            row["choice_logprobs"] = req.get("choice_logprobs")
            if "error" in req:
                row["error"] = req["error"]
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load, render, generate every group in turn, write the predictions; returns the stats."""
    from transformers import AutoTokenizer  # present in both environments (vLLM depends on it)

    requests = read_requests(args.requests)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(args.model, args.adapter))
    if tokenizer.pad_token_id is None and args.backend == "hf":
        tokenizer.pad_token = tokenizer.eos_token
    renderer = Renderer(tokenizer, json.loads(args.chat_template_kwargs))
    limit = args.max_model_len or model_max_length(args.model)
    prepare(requests, renderer, limit)
    limit = context_limit(args, requests, limit)
    backend: Any = VllmBackend(args, limit) if args.backend == "vllm" else HfBackend(args, tokenizer)
    warm_up(backend, requests)
    load_seconds = time.perf_counter() - start
    progress(f"model loaded in {load_seconds:.1f}s ({backend.name}, {backend.dtype})")
    groups: dict[str, dict[str, Any]] = {}
    for group, indices in groups_of(requests).items():
        groups[group] = run_group(backend, requests, indices)
        seconds = groups[group]["generate_seconds"] + groups[group]["loglik_seconds"]
        progress(f"{group}: {len(indices)} prompts in {seconds:.1f}s")
    write_predictions(args.output, requests)
    return {
        "backend": backend.name,
        "model": args.model,
        "adapter": args.adapter,
        "dtype": backend.dtype,
        "seed": args.seed,
        "max_model_len": limit,
        "chat_template": (
            ("adapter" if tokenizer_source(args.model, args.adapter) != args.model else "model")
            if renderer.has_template
            else "none (plain text)"
        ),
        "chat_template_kwargs": renderer.template_kwargs,
        "load_seconds": round(load_seconds, 3),
        "groups": groups,
        "versions": {**backend.versions(), "python": sys.version.split()[0]},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stats = run(args)
    args.stats.write_text(json.dumps(stats, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":  # vLLM's engine starts worker processes that re-import __main__: guard required
    sys.exit(main())
