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
    [row] = data["throughput"]
    assert (row["preset"], row["seq_len_tokens"]) == ("tiny", 64)
    for name in ("hope", "llama"):
        assert row[name]["params"] > 0 and row[name]["tokens_per_s"] > 0 and row[name]["median_s"] > 0
        assert row[name]["tie_word_embeddings"] is True
    assert 0.9 < row["param_ratio_llama_over_hope"] < 1.1
    s = data["memory_impl_speedup"]
    assert s["seq_len_tokens"] == 64 and s["fast_median_s"] > 0 and s["reference_median_s"] > 0 and s["speedup_x"] > 0
    assert data["wall_time_s"] > 0
    assert "| tiny | 64 |" in speed.markdown(results)
