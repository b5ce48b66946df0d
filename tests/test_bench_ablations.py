"""Smoke test of `benchmarks.ablations`: every variant, a few steps, short blocks, into a temporary folder."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repo root

from benchmarks import ablations


def _finite_or_inf(x):
    return isinstance(x, float) and (math.isfinite(x) or x == float("inf"))


def test_ablations_benchmark_smallest_case(tmp_path):
    steps, eval_every = 3, 2
    results = ablations.run(out=tmp_path, seeds=[0, 1], steps=steps, batch_size=2, seq_len=64, vocab_size=300,
                            max_chars=30_000, val_blocks=2, eval_every=eval_every)
    data = json.loads((tmp_path / "ablations.json").read_text())
    assert data == json.loads(json.dumps(results))
    assert (tmp_path / "ablations.png").stat().st_size > 0
    assert data["wall_time_s"] > 0 and {"cpu_count", "torch_threads"} <= set(data["machine"])
    s = data["setup"]
    assert (s["steps"], s["seq_len_tokens"], s["val_blocks"], s["lr"], s["quick"]) == (steps, 64, 2, 3e-3, False)
    assert s["vocab_size"] <= 300 and s["train_blocks"] > 0

    assert s["seeds"] == [0, 1] and [r["seed"] for r in data["runs"]] == [0, 1]
    for run in data["runs"]:
        _check_one_seed(run["variants"], steps)
    assert data["runs"][0]["variants"]["hope"]["val_loss"] != data["runs"][1]["variants"]["hope"]["val_loss"]
    for name, r in data["variants"].items():                                # the mean over the seeds
        ppl = [run["variants"][name]["val_perplexity"] for run in data["runs"]]
        assert math.isclose(r["val_perplexity"], sum(ppl) / 2)
        assert (r["val_perplexity_min"], r["val_perplexity_max"]) == (min(ppl), max(ppl))
        full = data["variants"]["hope"]["val_perplexity"]
        assert math.isclose(r["val_ppl_rel_delta_vs_hope"], r["val_perplexity"] / full - 1)
    table = ablations.markdown(results)
    assert all(f"| {name} |" in table for name in data["variants"]) and "Mean over seeds 0, 1" in table


def _check_one_seed(variants, steps):
    assert list(variants) == list(ablations.VARIANTS)
    for name, r in variants.items():
        assert r["flags"] == json.loads(json.dumps(ablations.VARIANTS[name]))
        for field, value in r["flags"].items():  # the flag really reached the model's config
            assert r["config"][field] == value
        assert r["params"] > 0 and r["steps_done"] == steps and r["diverged"] is False
        assert len(r["train_loss"]) == steps and all(_finite_or_inf(x) for x in r["train_loss"])
        assert [step for step, _ in r["val_curve"]] == [0, 2, 3]
        assert all(_finite_or_inf(loss) for _, loss in r["val_curve"])
        assert r["val_loss"] == r["val_curve"][-1][1] and math.isfinite(r["val_loss"])
        assert math.isclose(r["val_perplexity"], math.exp(r["val_loss"]))
        assert r["median_step_s"] > 0
        assert _finite_or_inf(r["val_ppl_delta_vs_hope"]) and _finite_or_inf(r["val_ppl_rel_delta_vs_hope"])

    full = variants["hope"]
    assert full["config"] == {"cms_chunk_sizes": [64, 256], "self_modifying": True, "use_dgd": True,
                              "use_momentum": True, "adaptive_query": True, "memory_writes_first_layer": False}
    assert full["val_ppl_delta_vs_hope"] == 0.0
    for name, r in variants.items():
        if name != "hope":  # exactly one component differs from full Hope, and it changes what the model computes
            assert sum(r["config"][k] != full["config"][k] for k in full["config"]) == 1
            assert r["val_curve"][0][1] != full["val_curve"][0][1]
    assert variants["no_cms"]["params"] < full["params"]
    assert variants["no_self_modification"]["params"] < full["params"]
    assert variants["no_dgd"]["params"] == full["params"]  # same weights, another memory update rule
    assert variants["writes_first_layer"]["params"] == full["params"]


def test_ablations_rejects_unknown_settings(tmp_path):
    with pytest.raises(TypeError):
        ablations.run(out=tmp_path, stepz=3)
    with pytest.raises(ValueError):
        ablations.run(out=tmp_path, variants=["no_such_variant"])
