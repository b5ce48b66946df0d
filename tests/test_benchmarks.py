"""Smoke test of `benchmarks.speed`: the smallest case, a single timed iteration, into a temporary folder."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repo root

from benchmarks import speed


def test_speed_benchmark_smallest_case(tmp_path):
    results = speed.run(presets=("tiny",), lengths=(64,), ref_len=64, iters=1, budget_s=1.0, out=tmp_path)
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data == json.loads(json.dumps(results))
    assert (tmp_path / "speed.png").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speed.json", "speed.png"]   # no partial or temporary file
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
        assert r["saved_activations_bytes"] == 64 * r["saved_activations_bytes_per_token"] > 0
        if sys.platform == "linux":                  # a fresh process per case: the step's own activations show
            assert r["peak_rss_above_start_bytes"] > r["saved_activations_bytes"] / 2
    assert 0.9 < row["param_ratio_llama_over_hope"] < 1.1
    s = data["memory_impl_speedup"]
    assert s["seq_len_tokens"] == 64 and s["fast_median_s"] > 0 and s["reference_median_s"] > 0 and s["speedup_x"] > 0
    assert data["wall_time_s"] > 0
    assert "| tiny | 64 |" in speed.markdown(results)
    f = row["hope"]["forward_flops"]                          # where Hope's forward FLOPs go: the parts add up
    parts = ("memory_per_token", "cms_mlp_per_token", "cms_updates_per_token", "head_and_teach_per_token")
    assert f["cms_updates_per_token"] == 0         # 64 tokens: no CMS level commits inside the call, no sums taken
    assert all(f[k] > 0 for k in parts if k != "cms_updates_per_token")
    assert abs(sum(f[k] for k in parts) - f["total_per_token"]) < 1e-6 * f["total_per_token"]
    assert 0 < row["llama"]["forward_flops"]["total_per_token"] < row["llama"]["flops_per_step"] / 64
    assert "Forward FLOPs per token" in speed.markdown(results)
    c = row["hope_compiled"]                                  # regional compile (`hope-hf train --compile`)
    assert c["first_call_s"] > 0 and c["tokens_per_s"] == 64 / c["median_s"]
    assert 0 < c["aten_calls_per_token"] < row["hope"]["aten_calls_per_token"]   # inductor's kernels fuse the rest
    assert row["hope_compiled_over_llama_tokens_per_s"] == c["tokens_per_s"] / row["llama"]["tokens_per_s"]
    assert "Hope with compiled blocks (`compile_blocks`" in speed.markdown(results)
    # the bound no implementation doing these FLOPs can pass: Llama's step time over Hope's FLOPs at the matmul peak
    bound = row["llama"]["median_s"] * data["matmul_peak"]["flops_per_s"] / row["hope"]["flops_per_step"]
    assert row["hope_over_llama_tokens_per_s_at_peak"] == pytest.approx(bound, rel=1e-12)
    assert "What the FLOPs allow" in speed.markdown(results)
    assert row["hope"]["aten_calls_per_token"] > row["llama"]["aten_calls_per_token"]
    assert row["hope_over_llama_saved_activations"] == (row["hope"]["saved_activations_bytes"]
                                                        / row["llama"]["saved_activations_bytes"])
    assert "activations KiB per token" in speed.markdown(results)
    # activation checkpointing: the same model and step, fewer activations kept for backward
    c = row["hope_ckpt"]
    assert c["params"] == row["hope"]["params"] and c["flops_per_step"] == row["hope"]["flops_per_step"]  # model FLOPs
    assert c["fraction_of_matmul_peak"] == c["flops_per_step"] / c["median_s"] / data["matmul_peak"]["flops_per_s"]
    assert 0 < c["saved_activations_bytes"] < row["hope"]["saved_activations_bytes"]
    assert row["hope_ckpt_over_llama_tokens_per_s"] == c["tokens_per_s"] / row["llama"]["tokens_per_s"]
    assert "Hope ckpt tok/s" in speed.markdown(results)


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


def test_flop_counter_counts_cpu_attention_forward_and_backward():
    """The CPU flash-attention kernel Llama's sdpa attention runs here: FlopCounterMode alone counts 0 for it.
    Causal attention counts the lower triangle of the score matrix (T(T+1)/2 of T^2 entries), full attention all."""
    import torch

    q = torch.randn(1, 2, 32, 8, requires_grad=True)

    def fwd(causal):
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=causal)

    full = 2 * (2 * 2 * 32 * 32 * 8)                                             # QK^T and PV, 2 heads
    assert speed.count_flops(lambda: fwd(False)) == full
    assert speed.count_flops(lambda: fwd(False).sum().backward()) == full * 7 // 2   # + 5 products in backward
    assert speed.count_flops(lambda: fwd(True)) == full * 33 // 64
    assert speed.count_flops(lambda: fwd(True).sum().backward()) == full * 7 // 2 * 33 // 64


def test_saved_for_backward_counts_activations_once_and_not_parameters():
    import torch

    w = torch.nn.Parameter(torch.ones(16, 8))
    x = torch.ones(32, 16, requires_grad=True)

    def fn():
        h = x @ w                   # saves x (2 KiB) and w (a parameter: not counted)
        return (h * h).sum() + (h * 3).sum()    # h * h saves h (1 KiB) twice: counted once; h * 3 saves nothing

    assert speed.saved_for_backward_bytes(fn, [w]) == 4 * (32 * 16 + 32 * 8)
    assert speed.saved_for_backward_bytes(fn) == 4 * (32 * 16 + 32 * 8 + 16 * 8)


def test_peak_rss_sees_a_large_temporary():
    import torch

    rss = speed.peak_rss_bytes(lambda: torch.ones(64 * 2 ** 20 // 4).add_(1).sum())   # 64 MiB, freed on return
    if rss is not None:                                                          # Linux
        assert 60 * 2 ** 20 <= rss < 200 * 2 ** 20


def test_speed_benchmark_under_contention(tmp_path):
    """`--contention`: the cases run next to one busy background process, which is gone afterwards."""
    import psutil

    def children():
        return {p.pid for p in psutil.Process().children(recursive=True)
                if "resource_tracker" not in " ".join(p.cmdline())}

    before = children()
    results = speed.run(presets=("tiny",), lengths=(64,), iters=1, budget_s=1.0, out=tmp_path, reference=False,
                        contention=True, name="speed_contention", compiled=False)
    bg = results["settings"]["background_process"]
    assert bg["command"] == "python -c 'while True: pass'"
    assert bg["cpu_s"] > 0.3 * results["wall_time_s"]                      # the busy process really ran
    assert (tmp_path / "speed_contention.json").is_file()
    assert "busy background process" in speed.markdown(results)
    # gone afterwards; multiprocessing's resource tracker (started by the spawned memory-measuring children, it lives
    # as long as this process) is not a leftover of the case
    assert children() == before


def test_speed_benchmark_measures_checkpointed_hope_where_eager_does_not_fit(tmp_path):
    """A case in `skip` (eager Hope does not fit) still measures Llama and checkpointed Hope, side by side, eager and
    with compiled blocks (`hope-hf train --compile --gradient-checkpointing`)."""
    from benchmarks import readme

    results = speed.run(presets=("tiny",), lengths=(64,), iters=1, budget_s=1.0, out=tmp_path, reference=False,
                        skip={("tiny", 64): ("does not fit", True)})
    assert results["throughput"] == [] and len(results["checkpointed_only"]) == 1
    row = results["checkpointed_only"][0]
    assert "hope" not in row and row["hope_ckpt"]["tokens_per_s"] > 0 and row["llama"]["tokens_per_s"] > 0
    assert "hope_compiled" not in row
    c = row["hope_ckpt_compiled"]
    assert c["first_call_s"] > 0 and c["tokens_per_s"] == 64 / c["median_s"]
    assert row["hope_ckpt_compiled_over_llama_tokens_per_s"] == c["tokens_per_s"] / row["llama"]["tokens_per_s"]
    assert row["hope_ckpt_over_llama_saved_activations"] > 0
    text = speed.markdown(results)
    assert "| tiny | 64 |" in text
    assert f"| {c['tokens_per_s']:,.0f} / {row['hope_ckpt_compiled_over_llama_tokens_per_s']:.3f}x (" in text
    assert "(does not fit); measured there: Llama and Hope with activation checkpointing only" in text
    assert any("saved activations Hope (checkpointed) / Llama, tiny @ 64" in line for line in readme.targets(tmp_path))
    row["seq_len_tokens"], row["hope_ckpt_over_llama_tokens_per_s"] = 8192, 0.25       # as if measured at 8192
    row["hope_ckpt_compiled_over_llama_tokens_per_s"] = 0.5
    (tmp_path / "speed.json").write_text(json.dumps(results))
    assert ("| training tok/s Hope (checkpointed) / Llama, tiny @ 8192 | 0.250x (0.500x compiled) | > 1.0 "
            "| **not met** |" in readme.targets(tmp_path))
    row["hope_ckpt_compiled_over_llama_tokens_per_s"] = 1.01                           # met by the compiled blocks
    (tmp_path / "speed.json").write_text(json.dumps(results))
    assert ("| training tok/s Hope (checkpointed) / Llama, tiny @ 8192 | 0.250x (1.010x compiled) | > 1.0 | met |"
            in readme.targets(tmp_path))


def test_gpu_speed_results_give_the_mfu_row_and_notes(tmp_path):
    """gpu_speed.json (written by gpu.sh) adds a GPU MFU row to the targets table, tiny fractions stay visible, and
    the JSON's notes are printed under its table."""
    import json

    from benchmarks import readme

    results = speed.run(presets=("tiny",), lengths=(64,), iters=1, budget_s=1.0, out=tmp_path, reference=False,
                        compiled=False, name="gpu_speed", aten_max_len=0)
    assert "aten_calls_per_token" not in results["throughput"][0]["hope"]          # aten_max_len=0: no profiler
    results["throughput"][0]["hope"]["fraction_of_matmul_peak"] = 3.5e-4
    results["notes"] = ["joined from two runs"]
    (tmp_path / "gpu_speed.json").write_text(json.dumps(results))
    row = "| GPU training MFU (bf16), Hope tiny @ 64, eager | 0.035% | >= 30% (340m @ 2048) | **not met** |"
    assert row in readme.targets(tmp_path)
    text = speed.markdown(results)
    assert "| 0.035% |" in text and "Note: joined from two runs" in text


def test_speed_benchmark_keeps_finished_cases_when_a_later_one_fails(tmp_path):
    """A run that dies (here: an empty input at the second length) leaves the finished cases in <name>.partial.json."""
    with pytest.raises(ValueError):
        speed.run(presets=("tiny",), lengths=(64, 0), ref_len=64, iters=1, budget_s=1.0, out=tmp_path,
                  reference=False, compiled=False)
    assert not (tmp_path / "speed.json").exists()
    partial = json.loads((tmp_path / "speed.partial.json").read_text())
    assert [(r["preset"], r["seq_len_tokens"]) for r in partial["throughput"]] == [("tiny", 64)]
    assert partial["throughput"][0]["hope"]["tokens_per_s"] > 0


def test_cuda_graph_cases_join_with_their_llama_and_give_the_best_mfu_row(tmp_path):
    """`benchmarks.cuda_graphs collect` (gpu.sh, on a GPU) joins per-process cases: each next to the Llama of its
    preset, length and batch, as a fraction of the best measured peak with eager Hope's FLOPs at that chunk size; the
    README's MFU row takes the largest Hope measured, its best way of running. (The capture itself needs CUDA.)"""
    from benchmarks import cuda_graphs, readme

    def measure(tokens_per_s, tokens=2048, **extra):
        return {"tokens_per_s": tokens_per_s, "median_s": tokens / tokens_per_s, **extra}

    def case(model, preset, params, chunk, eager, graphed, flops=None, peak=400e12):
        c = {"label": f"{model}_{preset}_c{chunk}", "model": model, "preset": preset, "chunk": chunk, "params": params,
             "compiled": False, "seq_len_tokens": 2048, "batch_size": 1, "gpu": "GPU", "wall_time_s": 10.0,
             "matmul_peak": {"flops_per_s": peak}, "machine": {"cpu_count": 16, "torch": "2.x"},
             "eager": measure(eager, **({"flops_per_step": flops} if flops else {}))}
        if graphed:
            c["graphed"] = measure(graphed, loss_eager=10.5, loss_replayed=10.5)
        else:
            c["graphed_error"] = "RuntimeError: operation not permitted when stream is capturing"
        return c

    cases = [case("llama", "small", 35e6, None, 100_000, 400_000, 2e11),
             case("hope", "small", 35e6, 64, 250, 2_500, 5e11, peak=500e12),
             case("hope", "small", 35e6, 256, 1_000, None, 1e12),
             case("llama", "340m", 386e6, None, 20_000, 80_000, 2e12),
             case("hope", "340m", 385e6, 256, 300, 1_900, 8e12)]
    for c in cases:
        (tmp_path / f"case_{c['label']}.json").write_text(json.dumps(c))
    results = cuda_graphs.collect(tmp_path, tmp_path / "out")
    assert results["matmul_peak"]["flops_per_s"] == 500e12 and results["wall_time_s"] == 50.0
    assert [c["label"] for c in results["cases"]] == ["hope_small_c64", "hope_small_c256", "llama_small_cNone",
                                                      "hope_340m_c256", "llama_340m_cNone"]
    hope = results["cases"][0]
    assert hope["graphed_over_llama_graphed_tokens_per_s"] == pytest.approx(2_500 / 400_000)
    assert hope["eager_over_llama_eager_tokens_per_s"] == pytest.approx(250 / 100_000)
    assert hope["graphed_fraction_of_matmul_peak"] == pytest.approx(5e11 * 2_500 / 2048 / 500e12)
    assert "graphed" not in results["cases"][1] and "graphed_fraction_of_matmul_peak" not in results["cases"][1]
    assert results["cases"][1]["eager_fraction_of_matmul_peak"] == pytest.approx(1e12 * 1_000 / 2048 / 500e12)
    assert (tmp_path / "out" / "gpu_graphs.png").stat().st_size > 0
    text = cuda_graphs.markdown(results)
    assert "| hope_small_c64 | 35.0M | 250 | 2,500 | 10.0x | 0.006x |" in text
    assert "(RuntimeError: operation not permitted when stream is capturing)" in text
    (tmp_path / "out" / "gpu_graphs.json").rename(tmp_path / "gpu_graphs.json")
    what, fraction = readme.gpu_mfu(tmp_path)
    assert what == "Hope 340m (chunks 256) @ 2048, one CUDA graph per step"
    assert fraction == pytest.approx(8e12 * 1_900 / 2048 / 500e12)
    assert any("GPU training speed, whole step as one CUDA graph" in line for line in readme.sections(tmp_path))


def test_targets_table_judges_the_best_way_to_train_and_says_when_a_target_is_out_of_reach(tmp_path):
    """A tokens/s target row shows eager and compiled, is met by either, and says "out of reach" when even every
    Hope FLOP at the matmul peak (`hope_over_llama_tokens_per_s_at_peak`) would not meet it."""
    import json

    from benchmarks import readme

    def row(preset, eager, compiled, bound):
        return {"preset": preset, "seq_len_tokens": 2048, "hope": {"fraction_of_matmul_peak": 0.5},
                "hope_over_llama_tokens_per_s": eager, "hope_compiled_over_llama_tokens_per_s": compiled,
                "hope_over_llama_tokens_per_s_at_peak": bound}

    speed_json = {"targets": {"hope_over_llama_tokens_per_s_at_2048": 0.8, "fraction_of_matmul_peak": 0.4},
                  "throughput": [row("small", 0.3, 0.37, 0.61), row("tiny", 0.5, 0.85, 1.2), row("x", 0.5, 0.6, 1.2)]}
    (tmp_path / "speed.json").write_text(json.dumps(speed_json))
    lines = readme.targets(tmp_path)
    assert ("| training tok/s Hope / Llama, small @ 2048 | 0.300x (0.370x compiled) | >= 0.8 | **not met** (out of "
            "reach: 0.61x with every FLOP at the matmul peak) |") in lines
    assert "| training tok/s Hope / Llama, tiny @ 2048 | 0.500x (0.850x compiled) | >= 0.8 | met |" in lines
    assert "| training tok/s Hope / Llama, x @ 2048 | 0.500x (0.600x compiled) | >= 0.8 | **not met** |" in lines


def test_targets_table_judges_aten_calls_of_eager_or_compiled_tiny(tmp_path):
    """The aten-calls target (tiny, <= 20 per token) shows eager and compiled and is met by either."""
    import json

    from benchmarks import readme

    def row(T, eager, compiled):
        return {"preset": "tiny", "seq_len_tokens": T, "hope": {"fraction_of_matmul_peak": 0.5,
                                                                "aten_calls_per_token": eager},
                "hope_over_llama_tokens_per_s": 0.5, **({"hope_compiled": {"aten_calls_per_token": compiled}}
                                                        if compiled is not None else {})}

    speed_json = {"targets": {"tiny_aten_calls_per_token": 20, "fraction_of_matmul_peak": 0.4,
                              "hope_over_llama_tokens_per_s_at_2048": 0.8},
                  "throughput": [row(512, 113.2, 17.94), row(2048, 113.0, 21.0), row(64, 19.0, None)]}
    (tmp_path / "speed.json").write_text(json.dumps(speed_json))
    lines = readme.targets(tmp_path)
    assert "| aten calls per token of a training step, Hope tiny @ 512 | 113 (17.9 compiled) | <= 20 | met |" in lines
    assert ("| aten calls per token of a training step, Hope tiny @ 2048 | 113 (21.0 compiled) | <= 20 | **not met** |"
            in lines)
    assert "| aten calls per token of a training step, Hope tiny @ 64 | 19 | <= 20 | met |" in lines


def test_targets_table_judges_flops_of_eager_or_compiled_hope(tmp_path):
    """The FLOP/s target (>= 40% of the matmul peak) shows the best eager and the best compiled case, each named (they
    need not be the same case), and is met by either, as the tokens/s and aten-calls rows are."""
    import json

    from benchmarks import readme

    def row(T, eager, compiled):
        return {"preset": "small", "seq_len_tokens": T, "hope": {"fraction_of_matmul_peak": eager},
                "hope_over_llama_tokens_per_s": 0.5,
                **({"hope_compiled": {"fraction_of_matmul_peak": compiled}} if compiled is not None else {})}

    def verdict(*rows):
        (tmp_path / "speed.json").write_text(json.dumps({"targets": {"fraction_of_matmul_peak": 0.4,
                                                                     "hope_over_llama_tokens_per_s_at_2048": 0.8},
                                                         "throughput": list(rows)}))
        return [line for line in readme.targets(tmp_path) if "matmul peak" in line]

    assert verdict(row(512, 0.378, 0.51), row(2048, 0.371, 0.435)) == [
        "| Hope FLOP/s / measured matmul peak (best case) | 37.8% (small @ 512); 51.0% compiled (small @ 512) | >= 40% "
        "| met |"]
    assert verdict(row(512, 0.545, 0.545), row(2048, 0.406, 0.599)) == [
        "| Hope FLOP/s / measured matmul peak (best case) | 54.5% (small @ 512); 59.9% compiled (small @ 2048) "
        "| >= 40% | met |"]
    assert verdict(row(512, 0.38, 0.39), row(2048, 0.37, None)) == [
        "| Hope FLOP/s / measured matmul peak (best case) | 38.0% (small @ 512); 39.0% compiled (small @ 512) | >= 40% "
        "| **not met** |"]
    assert verdict(row(512, 0.42, None)) == [
        "| Hope FLOP/s / measured matmul peak (best case) | 42.0% (small @ 512) | >= 40% | met |"]
