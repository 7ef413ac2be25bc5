"""`lfw report`: tables, differences, loss curves and score charts from run and eval folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lfw.cli import cli, main
from lfw.infra.errors import UserError
from lfw.post.report import build_report, collect, score_frame


def fake_run(root: Path, name: str = "demo") -> Path:
    """A finished two-stage run directory, as `lfw run` leaves it."""
    run = root / "runs" / name / "20250101-000000"
    stages = []
    for stage, losses in (("1-sft", [2.0, 1.5, 1.1]), ("2-dpo", [0.69, 0.6])):
        (run / stage).mkdir(parents=True)
        records = [
            {"current_steps": 2 * (i + 1), "total_steps": 2 * len(losses), "loss": loss}
            for i, loss in enumerate(losses)
        ]
        records.append({"current_steps": 4, "total_steps": 6, "eval_loss": 1.3})
        (run / stage / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"half')
        stages.append({"name": stage, "output_dir": str(run / stage), "status": "ok", "seconds": 12.5})
    manifest = {"status": "ok", "recipe": {"resolved": {"name": name}}, "stages": stages}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def fake_eval(out: Path, label: str, scores: dict[str, float], created: str) -> Path:
    benchmarks = {
        name: {
            "kind": "alpaca",
            "samples": 10,
            "primary": "rougeL",
            "score": value,
            "metrics": {"rougeL": value, "bleu": 100 * value},
            "samples_per_s": 5.0,
            "tokens_per_s": 50.0,
        }
        for name, value in scores.items()
    }
    summary = {
        "model": label,
        "backend": "hf",
        "dtype": "float32",
        "seed": 0,
        "created": created,
        "samples_per_s": 5.0,
        "tokens_per_s": 50.0,
        "load_seconds": 1.0,
        "benchmarks": benchmarks,
    }
    (out / label).mkdir(parents=True)
    (out / label / "summary.json").write_text(json.dumps(summary))
    return out / label


def test_report_tables_differences_and_images(tmp_path):
    run = fake_run(tmp_path)
    evals = tmp_path / "evals"
    fake_eval(evals, "sft", {"syn": 0.4, "other": 0.5}, "2025-01-01T00:00:02+00:00")
    fake_eval(evals, "base", {"syn": 0.1, "other": 0.5}, "2025-01-01T00:00:01+00:00")  # evaluated first
    fake_eval(evals, "dpo", {"syn": 0.3}, "2025-01-01T00:00:03+00:00")  # not evaluated on "other"
    report = build_report([run, evals], tmp_path / "report")
    text = report.read_text()
    assert "| syn | rougeL | 0.1000 | 0.4000 | 0.3000 | +0.3000 | +0.2000 |" in text  # base, sft, dpo, Δs
    assert "| other | rougeL | 0.5000 | 0.5000 | – | +0.0000 | – |" in text
    assert "| demo/20250101-000000 | 1-sft | ok | 6 | 2.0000 | 1.1000 | 1.3000 |" in text
    for image in ("scores.png", "loss_demo_20250101-000000.png"):
        assert f"]({image})" in text
        assert (tmp_path / "report" / image).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "scores.csv").read_text().startswith("benchmark,metric,base,sft,dpo,Δ sft,Δ dpo")
    assert "bleu" in (tmp_path / "report" / "metrics.csv").read_text()


def test_order_baseline_and_duplicate_labels(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    fake_eval(first, "base", {"syn": 0.2}, "2025-01-01T00:00:01+00:00")
    fake_eval(second, "base", {"syn": 0.3}, "2025-01-01T00:00:00+00:00")
    inputs = collect([second / "base", first])  # the order given wins over evaluation time
    assert [s["model"] for s in inputs.evals] == ["base (b)", "base (a)"]
    frame = score_frame(inputs.evals, baseline="base (a)")
    assert frame.loc["syn", "Δ base (b)"] == pytest.approx(0.1)
    with pytest.raises(UserError, match="--baseline nope"):
        score_frame(inputs.evals, baseline="nope")


def test_report_errors_are_clear(tmp_path, runner):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no run (manifest.json) and no evaluation" in result.output
    assert "Traceback" not in result.output
    assert runner.invoke(cli, ["report", str(tmp_path / "missing")]).exit_code == 2


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_report_replaces_only_an_earlier_lfw_report_and_all_of_it(tmp_path, capsys):
    first, second = fake_run(tmp_path, "first"), fake_run(tmp_path, "second")
    out = tmp_path / "report"
    build_report([first, second], out)
    assert (out / "loss_second_20250101-000000.png").is_file()
    build_report([first], out)  # the same folder again, one run fewer
    assert sorted(p.name for p in out.iterdir()) == [".lfw-report.json", "loss_first_20250101-000000.png", "report.md"]
    assert "second/" not in (out / "report.md").read_text()  # no stale image or table left looking current
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left

    mine = tmp_path / "mine"  # a folder lfw did not write
    mine.mkdir()
    (mine / "report.md").write_text("my own notes")
    (out / "notes.txt").write_text("added to the report by hand")
    edited = tmp_path / "edited"
    build_report([first], edited)
    (edited / "report.md").write_text("edited by hand")
    before = tree(tmp_path)
    capsys.readouterr()
    for folder, reason in (
        (mine, "already holds files lfw report did not write"),
        (out, "holds files lfw report did not write, or changed since it did \\(notes.txt\\)"),
        (edited, "changed since it did \\(report.md\\)"),
    ):
        assert main(["report", str(first), "-o", str(folder)]) == 2
        err = capsys.readouterr().err
        assert f"-o {folder}: " in err and re.search(reason, err) and "Traceback" not in err
    assert tree(tmp_path) == before  # every byte still there


@pytest.mark.slow
def test_report_end_to_end_base_against_sft(pipeline, tmp_path):  # noqa: F811 - the imported fixture
    """The real thing: the SFT run's loss curve and base vs SFT on the synthetic benchmarks."""
    evals = Path(pipeline["evals"])
    out = tmp_path / "report"
    assert main(["report", pipeline["run_dir"], str(evals / "base"), str(evals / "sft"), "-o", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| benchmark | metric | base | sft | Δ sft |" in text
    row = next(line for line in text.splitlines() if line.startswith("| syn | rougeL |"))
    assert float(row.split("|")[-2]) > 0.05  # Δ sft on the learnable task
    assert "| syn/" in text and "| 1-sft | ok | 30 |" in text
    assert (out / "scores.png").stat().st_size > 0
    assert list(out.glob("loss_syn_*.png"))
