"""A trained model stays stable far beyond its training length (issue #10): the logits' gain from a tiny nudge of
token 0 stays <= 100 out to 16x the training length (float64), and in float32 one call equals split calls (the memory
carried in the cache) to 1e-3 at 4k tokens. The issue asks for the gain out to 8x; there a chaotic model can sit on
either side of 100 (43.6 and 169 measured for two trainings that differ only in float rounding), at 16x it cannot.
Fresh models pass both trivially; what training makes of the memories' writes is what can make them chaotic.

Measured with this recipe before the output memory's retention pulled it back to M_0 (it decayed to 0, issue #10):
gain per 256-token window 51, 0.4, 1.1, 0.8, 2.2, 3.9, 12, 44 (8x), 284, 1.9e3, ... 2.5e5 (16x); one vs split max
|logit difference| per 512 tokens <= 3.1e-5 to 2k, then 7.5e-4, 2.6e-3, 0.059 (4k). Switching the output memory's
first-layer (W2) writes off in evaluation removed it (gain <= 0.04 past the first window): decaying W2 towards 0
shrinks s = silu(W2 k), whose unit-norm gradient moves n = s/|s| by eta/|s|^2. With the pull to M_0: gain 48, then
<= 0.02 in every later window; split difference <= 4.3e-6.

The second model is trained on associative recall (`benchmarks.recall`'s recipe, shortened to 600 steps of 4 x 128
tokens, its memories' first layers written for the first 360; 400 steps with 240 learnt too little: loss 4.27 ->
2.38). With the first layers written throughout (before session 23's default), 400 steps, its memories turned
chaotic, the output memory's residuals M(k) - M(v) being heavy-tailed: gain per 256-token window 4.0, 1.4, 0.53,
1.5, 15, 100, 890, 8.2e4 (16x; 800 steps: 9e6; `.exp/chaos_steps.py`, `.exp/chaos_steps.jsonl`). With them fixed
(`memory_writes_first_layer=False`, the default) every write is a delta rule on unit features."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repo root

from benchmarks import common, recall

SEQ_LEN = 256


def learned(r, drop=2.0, last=50):
    """Training did not diverge and lowered the loss by `drop`: the mean loss of the last `last` steps against the
    first step's. One step's loss is a noisy judge: on the recall recipe it varies by 0.25 (sd) from step to step, and
    two trainings that differ only in float rounding ended at 2.12 and 2.20 (first 4.16) with last-50 means of 1.99
    and 2.03."""
    losses = r["train_loss"]
    return not r["diverged"] and sum(losses[-last:]) / len(losses[-last:]) < losses[0] - drop


@pytest.fixture(scope="module")
def docs_trained():
    """`tiny` trained on the docs corpus with lm_quality's recipe (150 steps of 4 x 256 tokens)."""
    torch.manual_seed(0)
    docs = common.corpus("docs", 300_000)
    tok = common.tokenizer_for(docs, 2048)
    train, _ = common.split_blocks(common.to_blocks(docs, tok, SEQ_LEN), 8, 0)
    model = common.build("hope", common.hope_config("tiny", tok), 0, SEQ_LEN)
    r = common.train_lm(model, train, 150, batch_size=4, lr=3e-3, seed=0)
    assert learned(r)
    ids = torch.cat([train[i] for i in range(16)]).view(1, -1)              # 4096 tokens of real text
    return model.eval(), ids, SEQ_LEN


@pytest.fixture(scope="module")
def recall_trained():
    """`tiny` (default config) trained with benchmarks.recall's recipe shortened to 600 steps (query warm-up 240, first
    layers written for 360), and one 4,096-token recall sequence with 8 pairs and 8 queries."""
    s = recall.settings(False, {"steps": 600, "query_warmup": 240, "first_layer_warmup": 360})
    model, r = recall.train_model("hope", recall.hope_config(s), s, 0, *recall.training_data(s, 0), 4 * s["seq_len"])
    assert learned(r)
    assert model.config.memory_writes_first_layer is False                      # the warm-up ended
    x, _ = recall.make_batch(1, 4096, 8, 8, torch.Generator().manual_seed(11))
    return model.eval(), x, s["seq_len"]


TRAINED = ["docs_trained", "recall_trained"]


@pytest.mark.slow
@pytest.mark.parametrize("trained", TRAINED)
def test_gain_from_a_nudge_of_token_0_stays_bounded_to_16x_the_training_length(trained, request):
    model, ids, seq_len = request.getfixturevalue(trained)
    ids = ids[:, :16 * seq_len]
    model = model.double()
    try:
        with torch.no_grad():
            e = model.model.embed_tokens(ids)
            base = model(inputs_embeds=e, use_cache=False).logits
            eps, nudged = 1e-6, e.clone()
            nudged[:, 0] += eps * torch.randn(e.shape[-1], dtype=e.dtype, generator=torch.Generator().manual_seed(1))
            gain = (model(inputs_embeds=nudged, use_cache=False).logits - base).abs().amax((0, 2)) / eps
    finally:
        model.float()
    by_window = [round(gain[i:i + seq_len].max().item(), 2) for i in range(0, gain.numel(), seq_len)]
    assert max(by_window) <= 100, by_window
    assert gain[seq_len:].max() > 0                      # token 0 still reaches the far positions (through the memory)


@pytest.mark.slow
@pytest.mark.parametrize("trained", TRAINED)
def test_float32_one_call_equals_split_calls_at_4k_tokens(trained, request):
    model, ids, _ = request.getfixturevalue(trained)
    with torch.no_grad():
        one = model(input_ids=ids).logits
        first = model(input_ids=ids[:, :1000], use_cache=True)
        rest = model(input_ids=ids[:, 1000:], past_key_values=first.past_key_values, use_cache=True)
    diff = (one - torch.cat([first.logits, rest.logits], 1)).abs().amax(-1)[0]
    assert ids.shape[1] == 4096
    assert diff.max() <= 1e-3, [f"{diff[i:i + 512].max().item():.2g}" for i in range(0, 4096, 512)]
