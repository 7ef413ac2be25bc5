"""`lfw eval`: score models on local benchmark files through vLLM (or transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lfw.cli.options import vllm_python_option
from lfw.infra.errors import UserError

if TYPE_CHECKING:
    from lfw.post.eval.evaluate import EvalOptions


@click.command(name="eval")
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option(
    "--bench",
    "-b",
    "benches",
    multiple=True,
    metavar="[LABEL=][KIND:]FILE|NAME",
    help="A local benchmark file/folder, or a NAME looked up in --bench-dir (repeatable).",
)
@click.option(
    "--harness",
    "harness_benches",
    multiple=True,
    metavar="NAME=PATH",
    help="A standard benchmark scored by lm-evaluation-harness from local files (repeatable): mmlu, ceval, "
    "cmmlu, gsm8k, arc (arc_challenge), arc_easy, hellaswag, truthfulqa (truthfulqa_mc2), truthfulqa_mc1, ifeval.",
)
@click.option(
    "--num-fewshot",
    type=click.IntRange(min=0),
    default=None,
    help="--harness: few-shot examples per question (default: each task's own; gsm8k 5, most 0).",
)
@click.option(
    "--harness-chat/--harness-raw",
    "harness_chat",
    default=True,
    show_default=True,
    help="--harness: apply the model's chat template (lm-eval's --apply_chat_template), or lm-eval's plain prompts.",
)
@click.option(
    "--backend",
    type=click.Choice(["vllm", "hf"]),
    default="vllm",
    show_default=True,
    help="vllm: offline LLM.generate in the vLLM environment; hf: transformers, this environment.",
)
@click.option(
    "--adapter",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A LoRA adapter applied on top of every MODEL (e.g. RUN/1-sft).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N questions per benchmark.")
@click.option("--shuffle", is_flag=True, help="With --limit: a seeded random sample instead of the first N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (same seed, same results).")
@click.option(
    "-o",
    "--output-dir",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("eval_results"),
    show_default=True,
    help="Results go to OUT/<model label>/.",
)
@vllm_python_option
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Weights dtype. auto: float32 on a CPU (vllm: unless it has bf16 instructions), bf16/fp16 on GPUs.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="hf backend: prompts per generation batch.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Generation budget (default per kind: mc 32, mc-text 48, gsm8k 512, others 256).",
)
@click.option(
    "--max-model-len",
    type=click.IntRange(min=16),
    default=None,
    help="Context length (default: what the prompts need, within the model's limit).",
)
@click.option(
    "--tensor-parallel-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="vllm backend: GPUs per model.",
)
@click.option(
    "--eager/--no-eager",
    "enforce_eager",
    default=True,
    show_default=True,
    help="vllm backend: skip CUDA graphs / compilation (faster start; --no-eager for long runs).",
)
@click.option(
    "--thinking/--no-thinking",
    default=None,
    help="Pass enable_thinking to the chat template (default: what an lfw export's lineage.json says, as "
    "lfw serve does; else the template's own default).",
)
@click.option("--bench-dir", default=None, metavar="DIR", help="Where benchmark NAMEs are looked up.")
def eval_command(
    models: tuple[str, ...],
    benches: tuple[str, ...],
    harness_benches: tuple[str, ...],
    num_fewshot: int | None,
    harness_chat: bool,
    thinking: bool | None,
    **settings: Any,  # the rest of the options: EvalOptions' fields, same names
) -> None:
    """Score each MODEL (a model folder, an `lfw export`, or LABEL=PATH) on local benchmarks.

    \b
    Benchmark kinds (guessed from the name or the columns, or given as KIND:FILE):
      mc        multiple choice, MMLU/ARC/C-Eval rows: letter log-likelihood + generated letter
      mc-text   the same rows scored on each choice's text (ARC acc_norm style)
      gsm8k     question + answer ending in '#### N', checked with math-verify
      gen       prompt + reference(s): ROUGE (Chinese-aware), BLEU, exact match
      alpaca    your alpaca file: generate, compare with 'output' (ROUGE-L)
      sharegpt  your sharegpt/messages file: the last assistant turn is the reference
    Files: .jsonl .json .parquet .csv, a datasets save_to_disk folder, or a folder of data files
    (FOLDER@SPLIT picks a split).

    \b
    --harness NAME=PATH: lm-eval's own task, its data read from PATH (offline): a file
    with the hub dataset's columns, or a folder of split files (test.jsonl, train.jsonl);
    mmlu/ceval/cmmlu: a folder of per-subject files or one file with a 'subject' column.
    Results join the same summary.json; lm-eval's files go to OUT/<model>.harness/.

    \b
    Example:
      lfw eval base=Qwen3-4B sft=exports/sft --bench mmlu=data/mmlu_test.parquet \\
          --bench data/gsm8k_test.jsonl --limit 200 -o evals
    """
    from lfw.post.eval.evaluate import EvalOptions

    if not benches and not harness_benches:
        raise UserError("give at least one --bench or --harness")
    if settings["shuffle"] and not settings["limit"]:
        raise UserError("--shuffle samples --limit questions: give --limit N too")
    template_kwargs = {} if thinking is None else {"enable_thinking": thinking}
    options = EvalOptions(**settings, chat_template_kwargs=template_kwargs)
    run_scorers(models, benches, harness_benches, options, (num_fewshot, harness_chat))


def run_scorers(
    models: tuple[str, ...],
    benches: tuple[str, ...],
    harness_benches: tuple[str, ...],
    options: EvalOptions,
    harness: tuple[int | None, bool],
) -> None:
    """lfw's own scorers, then lm-eval's into the same summaries; --harness is checked first (no wasted run)."""
    from lfw.post.eval.evaluate import evaluate
    from lfw.post.eval.harness import HarnessOptions, check_specs, run_harness

    if harness_benches:
        check_specs(harness_benches, options)
    if benches:
        evaluate(models, benches, options)
    if harness_benches:
        harness_options = HarnessOptions(num_fewshot=harness[0], chat_template=harness[1])
        run_harness(models, harness_benches, options, harness_options, merge=bool(benches))


eval = eval_command  # noqa: A001 - the attribute name lfw.cli's COMMANDS table looks up
