"""The whole post-training chain on CPU, as a user runs it: train -> export -> serve -> eval -> report.

The run, the base and adapter evaluations come from conftest's session pipeline (tiny model, 30 LoRA steps
on lfw.tiny's learnable task). Here the adapter is merged with `lfw export`, the merged model is served by
vLLM and answers a chat request, then scored by both backends, and `lfw report` compares it with the base.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lfw.cli import main
from lfw.post.serve import running_server
from tests.conftest import GEN_TOKENS, bench_args, run_vllm_eval, summary


@pytest.mark.slow
def test_export_serve_eval_report(pipeline, vllm_env, tmp_path, offline_env):  # noqa: F811
    run_dir = Path(pipeline["run_dir"])
    export_dir = tmp_path / "merged"
    assert main(["export", str(run_dir), "-o", str(export_dir)]) == 0
    assert (export_dir / "lineage.json").is_file()

    with running_server(export_dir) as server:
        reply = server.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=8)
        assert reply["choices"][0]["message"]["content"] is not None
        assert server.base_url.startswith("http://127.0.0.1:")

    benches = {k.removeprefix("bench_"): Path(v) for k, v in pipeline.items() if k.startswith("bench_")}
    evals = Path(pipeline["evals"])
    common = [*bench_args({"syn": benches["syn"]}), "--max-new-tokens", GEN_TOKENS, "-o", str(evals)]
    assert main(["eval", f"merged-hf={export_dir}", "--backend", "hf", *common]) == 0
    run_vllm_eval(["eval", f"merged-vllm={export_dir}", "--backend", "vllm", *common])
    base = summary(evals, "base")["benchmarks"]["syn"]["score"]
    merged_hf = summary(evals, "merged-hf")["benchmarks"]["syn"]["score"]
    merged_vllm = summary(evals, "merged-vllm")["benchmarks"]["syn"]["score"]
    sft = summary(evals, "sft")["benchmarks"]["syn"]["score"]
    assert merged_hf == pytest.approx(sft, abs=0.02)  # merging changes nothing the adapter did
    assert merged_hf > base + 0.05 and merged_vllm > base + 0.05

    out = tmp_path / "report"
    labels = [str(evals / name) for name in ("base", "merged-hf", "merged-vllm")]
    assert main(["report", str(run_dir), *labels, "-o", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "base" in text and "merged-hf" in text and "merged-vllm" in text
    assert list(out.glob("*.png"))
