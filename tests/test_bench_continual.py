"""Smoke test of `benchmarks.continual`: both models, a few steps per phase, short blocks, into a temporary folder."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repo root

from benchmarks import continual


def _finite_or_inf(x):
    return isinstance(x, float) and (math.isfinite(x) or x == float("inf"))


def test_continual_benchmark_smallest_case(tmp_path):
    steps = 4
    results = continual.run(out=tmp_path, seeds=[0, 1], steps=steps, batch_size=2, seq_len=64, vocab_size=300,
                            max_chars=30_000, val_blocks=2, eval_every=2)
    data = json.loads((tmp_path / "continual.json").read_text())
    assert data == json.loads(json.dumps(results))
    assert (tmp_path / "continual.png").stat().st_size > 0
    assert data["wall_time_s"] > 0 and {"cpu_count", "torch_threads"} <= set(data["machine"])
    s = data["setup"]
    assert (s["steps_per_phase"], s["seq_len_tokens"], s["lr"], s["quick"]) == (steps, 64, 3e-3, False)
    assert {d: v["corpus"] for d, v in s["domains"].items()} == {"A": "docs", "B": "code"}
    assert all(v["val_blocks"] == 2 and v["train_blocks"] > 0 for v in s["domains"].values())

    assert s["seeds"] == [0, 1] and [r["seed"] for r in data["runs"]] == [0, 1]
    assert data["runs"][0]["models"]["hope"]["A_ppl_after_phase1"] != data["runs"][1]["models"]["hope"][
        "A_ppl_after_phase1"]                                              # the seeds differ
    for run in data["runs"]:
        _check_one_seed(run, steps)
    models = data["models"]                                               # the mean over the seeds
    for kind, m in models.items():
        for key in continual.SCALARS:
            vals = [run["models"][kind][key] for run in data["runs"]]
            assert math.isclose(m[key], sum(vals) / 2) and (m[key + "_min"], m[key + "_max"]) == (min(vals), max(vals))
    h, ll = models["hope"]["A_ppl_rise"], models["llama"]["A_ppl_rise"]
    ratio = data["hope_rise_over_llama_rise"]
    if ll > 0:
        assert math.isclose(ratio, h / ll)
        assert data["target_met"] is (ratio <= 0.7)
    else:
        assert ratio is None and data["target_met"] is False
    md = continual.markdown(results)
    assert "| hope |" in md and "| llama |" in md and "over seeds 0, 1" in md


def _check_one_seed(run, steps):
    models = run["models"]
    assert list(models) == ["hope", "llama"]
    assert 0.9 < models["llama"]["params"] / models["hope"]["params"] < 1.1
    for r in models.values():
        assert r["lr"] == 3e-3
        for phase, offset in (("phase1", 0), ("phase2", steps)):  # phase 2 continued in total steps, on B
            p = r[phase]
            assert p["steps_done"] == steps and p["diverged"] is False and p["median_step_s"] > 0
            assert len(p["train_loss"]) == steps and all(_finite_or_inf(x) for x in p["train_loss"])
            assert [step for step, _ in p["evals"]] == [offset, offset + 2, offset + steps]
            assert all(set(losses) == {"A", "B"} and all(_finite_or_inf(v) for v in losses.values())
                       for _, losses in p["evals"])
        p1, p2 = r["phase1"]["evals"], r["phase2"]["evals"]
        assert p2[0][1] == p1[-1][1]  # the same model carried over from phase 1 to phase 2
        assert p2[-1][1]["B"] < p2[0][1]["B"]  # phase 2 trained on B
        assert p1[-1][1]["A"] < p1[0][1]["A"]  # phase 1 trained on A
        assert math.isclose(r["A_ppl_after_phase1"], math.exp(p1[-1][1]["A"]))
        assert math.isclose(r["A_ppl_after_phase2"], math.exp(p2[-1][1]["A"]))
        assert math.isclose(r["B_ppl_after_phase2"], math.exp(p2[-1][1]["B"]))
        assert math.isclose(r["A_ppl_rise"], r["A_ppl_after_phase2"] / r["A_ppl_after_phase1"] - 1)

    h, ll = models["hope"]["A_ppl_rise"], models["llama"]["A_ppl_rise"]
    assert run["hope_rise_over_llama_rise"] == (h / ll if ll > 0 else None)


def test_continual_rejects_unknown_settings(tmp_path):
    with pytest.raises(TypeError):
        continual.run(out=tmp_path, stepz=3)
