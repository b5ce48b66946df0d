"""Smoke test of `benchmarks.lm_quality`: both corpora, a few steps, into a temporary folder."""

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repo root

from benchmarks import common, lm_quality


def test_lm_quality_smallest_case(tmp_path):
    res = lm_quality.run(quick=True, out=tmp_path, seeds=[0, 1], steps=3, seq_len=64, vocab_size=300,
                         max_chars=20_000, val_blocks=2, eval_every=2, batch_size=2)
    assert json.loads((tmp_path / "lm_quality.json").read_text()) == json.loads(json.dumps(res))
    assert (tmp_path / "lm_quality.png").stat().st_size > 0
    assert set(res["corpora"]) == {"docs", "code"} and res["seeds"] == [0, 1]
    for c in res["corpora"].values():
        assert [r["seed"] for r in c["runs"]] == [0, 1]
        for r in c["runs"]:
            h, l_ = r["models"]["hope"], r["models"]["llama"]
            assert 0.9 < l_["params"] / h["params"] < 1.1
            for m in (h, l_):
                assert m["steps_done"] == 3 and len(m["train_loss"]) == 3
                assert [e[0] for e in m["evals"]] == [0, 2, 3]
                assert m["val_perplexity"] == common.perplexity(m["evals"][-1][1]["val"])
                assert math.isfinite(m["val_loss"]) and m["val_loss"] > 0
            assert r["hope_over_llama_perplexity"] == h["val_perplexity"] / l_["val_perplexity"]
        # the seeds differ (split, initialisation, batches), and `models` holds their mean and range
        assert c["runs"][0]["models"]["hope"]["val_loss"] != c["runs"][1]["models"]["hope"]["val_loss"]
        for kind, m in c["models"].items():
            ppl = [r["models"][kind]["val_perplexity"] for r in c["runs"]]
            assert math.isclose(m["val_perplexity"], sum(ppl) / 2)
            assert (m["val_perplexity_min"], m["val_perplexity_max"]) == (min(ppl), max(ppl))
        h, l_ = c["models"]["hope"], c["models"]["llama"]
        assert c["hope_over_llama_perplexity"] == h["val_perplexity"] / l_["val_perplexity"]
        assert c["target_met"] == (c["hope_over_llama_perplexity"] <= lm_quality.TARGET)
    md = lm_quality.markdown(res)
    assert "| docs |" in md and "| code |" in md and "Mean over seeds 0, 1" in md


def test_corpora_are_different_domains():
    docs, code = common.corpus("docs", 50_000), common.corpus("code", 50_000)
    assert sum(map(len, docs)) == sum(map(len, code)) == 50_000
    code_text = "\n".join(code)
    assert code_text.count("def ") > 50 and '"""' not in code_text  # code, docstrings stripped
    assert not any(d in code_text for d in docs if len(d) > 80)  # no docstring survives in the code corpus


def test_split_blocks_is_a_seeded_partition():
    blocks = common.torch.arange(40).view(10, 4)
    train, val = common.split_blocks(blocks, 3, seed=1)
    assert len(train) == 7 and len(val) == 3
    assert sorted(common.torch.cat([train, val])[:, 0].tolist()) == list(range(0, 40, 4))
    assert common.torch.equal(val, common.split_blocks(blocks, 3, seed=1)[1])
