"""Smoke test of `benchmarks.speed`: the smallest case, a single timed iteration, into a temporary folder."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repo root

from benchmarks import speed


def test_speed_benchmark_smallest_case(tmp_path):
    results = speed.run(presets=("tiny",), lengths=(64,), ref_len=64, iters=1, budget_s=1.0, out=tmp_path)
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data == json.loads(json.dumps(results))
    assert (tmp_path / "speed.png").stat().st_size > 0
    assert {"platform", "processor", "cpu_count", "torch_threads", "torch", "transformers"} <= set(data["machine"])
    assert data["matmul_peak"]["flops_per_s"] > 0
    [row] = data["throughput"]
    assert (row["preset"], row["seq_len_tokens"]) == ("tiny", 64)
    for name in ("hope", "llama"):
        r = row[name]
        assert r["params"] > 0 and r["tokens_per_s"] > 0 and r["median_s"] > 0
        assert r["tie_word_embeddings"] is True
        # fwd+bwd is at least 3x the 2 * params-in-matmuls * tokens of a forward through the LM head alone
        assert r["flops_per_step"] >= 3 * 2 * 64 * r["vocab_size"] * r["hidden_size"]
        assert r["achieved_flops_per_s"] == r["flops_per_step"] / r["median_s"]
        assert 0 < r["fraction_of_matmul_peak"]
        assert 0 < r["aten_top_level_calls_per_token"] <= r["aten_calls_per_token"]
    assert 0.9 < row["param_ratio_llama_over_hope"] < 1.1
    s = data["memory_impl_speedup"]
    assert s["seq_len_tokens"] == 64 and s["fast_median_s"] > 0 and s["reference_median_s"] > 0 and s["speedup_x"] > 0
    assert data["wall_time_s"] > 0
    assert "| tiny | 64 |" in speed.markdown(results)
    assert row["hope"]["aten_calls_per_token"] > row["llama"]["aten_calls_per_token"]


def test_aten_calls_counts_every_operator_call_of_a_step():
    import torch

    class Two(torch.nn.Module):                      # forward: embedding, mul, cross-entropy; backward: their grads
        config = type("C", (), {"vocab_size": 5})

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(5, 5))

        def forward(self, input_ids, labels, use_cache):
            logits = torch.nn.functional.embedding(input_ids, self.w) * 2
            return type("O", (), {"loss": torch.nn.functional.cross_entropy(logits.view(-1, 5), labels.view(-1))})

    one, four = speed.aten_calls(Two(), 1), speed.aten_calls(Two(), 4)
    assert one["aten_calls_per_token"] == 4 * four["aten_calls_per_token"] > one["aten_top_level_calls_per_token"]


def test_flop_counter_counts_a_matmul():
    import torch

    a, b = torch.ones(8, 16), torch.ones(16, 4)
    assert speed.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
