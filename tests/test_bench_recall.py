"""Tests of `benchmarks.recall`: the synthetic associative-recall data, and the smallest run into a temporary folder."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repo root

import pytest
import torch

from benchmarks import recall


@pytest.mark.parametrize("seq_len", [64, 128, 512])
def test_make_batch_writes_records_and_scores_only_the_answers(seq_len):
    pairs, queries = 6, 3
    ids, labels = recall.make_batch(20, seq_len, pairs, queries, torch.Generator().manual_seed(seq_len))
    assert ids.shape == labels.shape == (20, seq_len) and ids.dtype == labels.dtype == torch.long
    assert 0 <= ids.min() and ids.max() < recall.VOCAB_SIZE
    keys, values, filler = (set(t.tolist()) for t in (recall.KEYS, recall.VALUES, recall.FILLER))
    assert recall.VOCAB_SIZE == 64 and not (keys & values or keys & filler or values & filler)
    assert min(keys | values | filler) > recall.QUERY
    for row, lab in zip(ids.tolist(), labels.tolist()):
        assert row[0] == recall.BOS and recall.PAD not in row and recall.EOS not in row
        body, tail = row[:seq_len - 3 * queries], row[seq_len - 3 * queries:]
        written, i = {}, 1
        while i < len(body):  # records `KEY k VAL v` and single filler tokens
            if body[i] == recall.KEY:
                k, val_marker, v = body[i + 1:i + 4]
                assert k in keys and val_marker == recall.VAL and v in values and k not in written  # distinct keys
                written[k] = v
                i += 4
            else:
                assert body[i] in filler
                i += 1
        assert len(written) == pairs and recall.QUERY not in body
        asked = set()
        for j in range(queries):
            q, k, v = tail[3 * j:3 * j + 3]
            assert q == recall.QUERY and k in written and v == written[k] and k not in asked
            asked.add(k)
        scored = [(t, y) for t, y in enumerate(lab) if y != -100]
        assert scored == [(seq_len - 3 * queries + 3 * j + 2, tail[3 * j + 2]) for j in range(queries)]
    # records land all over the body: some key is written in the first half, some in the second
    firsts = (ids[:, :seq_len // 2] == recall.KEY).any(1)
    lasts = (ids[:, seq_len // 2:seq_len - 3 * queries] == recall.KEY).any(1)
    assert firsts.any() and lasts.any()
    again = recall.make_batch(20, seq_len, pairs, queries, torch.Generator().manual_seed(seq_len))
    assert torch.equal(again[0], ids) and torch.equal(again[1], labels)  # seeded


def test_make_data_splits_the_sequences_over_the_pair_counts():
    ids, labels, pairs = recall.make_data(10, 128, (1, 2, 8), torch.Generator().manual_seed(0))
    assert ids.shape == labels.shape == (10, 128) and pairs.tolist() == [1] * 4 + [2] * 3 + [8] * 3
    assert ((labels != -100).sum(1) == pairs).all()  # every key is asked once
    assert ((ids == recall.KEY).sum(1) == pairs).all() and ((ids == recall.QUERY).sum(1) == pairs).all()


def test_curriculum_adds_one_pair_count_per_stage():
    ids, labels = recall.make_curriculum(40, 64, (1, 2, 4, 8), torch.Generator().manual_seed(0))
    assert ids.shape == labels.shape == (40, 64)
    pairs = (ids == recall.KEY).sum(1)
    for j, allowed in enumerate(((1,), (1, 2), (1, 2, 4), (1, 2, 4, 8))):
        stage = pairs[10 * j:10 * (j + 1)].tolist()
        assert set(stage) == set(allowed)
    assert pairs[10:20].tolist() != sorted(pairs[10:20].tolist())      # shuffled within a stage


def test_make_batch_rejects_impossible_settings():
    with pytest.raises(ValueError):
        recall.make_batch(1, 16, 8, 4, torch.Generator())
    with pytest.raises(ValueError):
        recall.make_batch(1, 128, 4, 5, torch.Generator())
    with pytest.raises(TypeError):
        recall.settings(False, {"nonsense": 1})


def test_recall_benchmark_smallest_case(tmp_path):
    results = recall.run(out=tmp_path, steps=2, batch_size=2, seq_len=64, multiples=(1, 2), pair_counts=(1, 2),
                         eval_seqs=2, seeds=(0, 1))
    data = json.loads((tmp_path / "recall.json").read_text())
    assert data == json.loads(json.dumps(results))
    assert (tmp_path / "recall.png").stat().st_size > 0
    assert {"platform", "processor", "cpu_count", "torch_threads", "torch", "transformers"} <= set(data["machine"])
    s = data["setup"]
    assert s["test_lengths_tokens"] == [64, 128] and s["test_answers_per_length"] == 6 and data["wall_time_s"] > 0
    for kind in ("hope", "llama"):
        m = data["models"][kind]
        assert m["steps_done"] == 2 and len(m["train_loss"]) == 2 and m["params"] > 0 and m["median_step_s"] > 0
        rates = [m[k] for k in ("accuracy", "value_prediction_rate", "in_context_value_rate")]
        rates += list(m["accuracy_by_pairs"].values())
        assert set(m["accuracy_by_pairs"]) == {"1", "2"}
        assert all(len(r) == 2 and all(0.0 <= a <= 1.0 for a in r) for r in rates)
        assert all(a <= v for a, v in zip(m["in_context_value_rate"], m["value_prediction_rate"]))
        assert data[f"{kind}_acc_at_4L"] == m["accuracy"][-1]  # no 4L here: the longest length stands in
    assert [r["seed"] for r in data["runs"]] == [0, 1]
    for kind in ("hope", "llama"):                        # the reported numbers are the mean over the seeds' runs
        runs = [r["models"][kind]["accuracy"] for r in data["runs"]]
        assert data["models"][kind]["accuracy"] == pytest.approx([(a + b) / 2 for a, b in zip(*runs)])
        assert data["models"][kind]["accuracy_min"] == [min(a, b) for a, b in zip(*runs)]
    assert 0.9 < data["models"]["llama"]["params"] / data["models"]["hope"]["params"] < 1.1
    assert data["target_length_multiple"] == 2
    assert data["target_met"] == (data["hope_acc_at_4L"] >= data["target_hope_acc_at_4L"])
    table = recall.markdown(results)
    assert "| hope | all |" in table and "| llama | 2 |" in table and "Target" in table and "seeds 0, 1" in table
    assert "- layer 1: cos match" in table
    assert set(data["no_binding_accuracy"]) == {"1", "2"} and "copying a value not yet answered" in table
    probe = data["models"]["hope"]["memory_probe"]
    assert len(probe) == 2 and all(len(layer["cos_kq_match"]) == 4 for layer in probe)


@torch.no_grad()
def test_memory_probe_sees_a_memory_whose_keys_match_its_queries():
    """Layer 0 built to bind: the key stream reads the token two back (the key k of `KEY k VAL v`, seen at v) and the
    query stream the current token (k of `QUERY k`), through the same projection, so every written key equals the query
    asking for it (cos 1), and other records' keys do not."""
    from hope_hf import HopeConfig, HopeForCausalLM

    torch.manual_seed(0)
    cfg = HopeConfig.from_preset("tiny", vocab_size=recall.VOCAB_SIZE, self_modifying=False)
    model = HopeForCausalLM(cfg)
    mem, D = model.model.layers[0].memory, cfg.hidden_size
    mem.in_proj.weight[D:2 * D] = mem.in_proj.weight[:D]                 # k stream = q stream ...
    mem.conv_weight.zero_()
    mem.conv_weight[:D, -1] = 1.0                                        # ... q reads the current token
    mem.conv_weight[D:2 * D, -3] = 1.0                                   # ... k the token two back
    probe = recall.memory_probe(model, 8, 128, 4, torch.Generator().manual_seed(0))
    assert len(probe) == 2
    torch.testing.assert_close(torch.tensor(probe[0]["cos_kq_match"]), torch.ones(4))
    assert max(probe[0]["cos_kq_other"]) < 0.9
    assert max(probe[1]["cos_kq_match"]) < 0.99                          # layer 1 was left as initialised
    # the four records' keys (and the queries asking for them) are four different key tokens: not collapsed
    assert max(probe[0]["cos_k_between_records"]) < 0.9 and max(probe[0]["cos_q_between_asks"]) < 0.9
    torch.testing.assert_close(torch.tensor(probe[0]["cos_k_between_records"]),
                               torch.tensor(probe[0]["cos_q_between_asks"]))   # same tokens, same projection


@torch.no_grad()
def test_memory_probe_sees_collapsed_queries():
    """Every key token given one embedding (what training did to them: the 16 key embeddings ended at cos 0.94): the
    queries asking for different records are one vector (cos 1, reported as collapsed), while the keys written at the
    value tokens still differ."""
    from hope_hf import HopeConfig, HopeForCausalLM

    torch.manual_seed(0)
    cfg = HopeConfig.from_preset("tiny", vocab_size=recall.VOCAB_SIZE, self_modifying=False)
    model = HopeForCausalLM(cfg)
    emb = model.model.embed_tokens.weight
    emb[recall.KEYS] = emb[recall.KEYS[0]].clone()
    probe = recall.memory_probe(model, 8, 128, 4, torch.Generator().manual_seed(0))
    assert min(probe[0]["cos_q_between_asks"]) > 0.999
    assert max(probe[0]["cos_k_between_records"]) < 0.9


@pytest.mark.parametrize("pairs", [2, 4, 8])
def test_no_binding_accuracy_is_what_copying_an_unanswered_value_scores(pairs):
    """Simulate the strategy on the benchmark's own sequences: at each ask, copy one of the records' values not yet
    given as an answer, at random; it scores `no_binding_accuracy`'s expectation, which is H_P/P or a little more."""
    gen = torch.Generator().manual_seed(pairs)
    ids, labels = recall.make_batch(4000, 128, pairs, pairs, gen)
    hits = total = 0
    for row, lab in zip(ids.tolist(), labels.tolist()):
        left = [row[i + 1] for i in range(len(row) - 1) if row[i] == recall.VAL]        # the records' values
        for i in (i for i, y in enumerate(lab) if y != -100):
            guess = left[int(torch.randint(len(left), (1,), generator=gen))]
            hits += guess == lab[i]
            total += 1
            left.remove(lab[i])                                                     # the answer is now in context
    expected = recall.no_binding_accuracy(ids, labels)
    assert abs(hits / total - expected["copy_unanswered"]) < 0.01
    harmonic = sum(1 / j for j in range(1, pairs + 1)) / pairs
    assert harmonic <= expected["copy_unanswered"] < harmonic + 0.06
    assert expected["copy"] == pytest.approx((1 + (pairs - 1) / recall.N_VALUES) / pairs, abs=0.01)  # shared values


def test_curriculum_stages_put_the_passkey_last_when_pairs_come_first():
    assert recall.curriculum_stages((1, 2, 4, 8), "pairs-first") == [2, 4, 8, 1]
    assert recall.curriculum_stages((1, 2, 4, 8), "passkey-first") == [1, 2, 4, 8]
    ids, _ = recall.make_curriculum(40, 64, recall.curriculum_stages((1, 2, 4, 8), "pairs-first"),
                                    torch.Generator().manual_seed(0))
    pairs = (ids == recall.KEY).sum(1)
    assert set(pairs[:10].tolist()) == {2} and 1 not in pairs[:30].tolist() and 1 in pairs[30:].tolist()
    for bad in ({"curriculum": True}, {"hope_init": "random"}, {"query_warmup": -1}, {"first_layer_warmup": -1}):
        with pytest.raises(ValueError):
            recall.settings(False, bad)


@torch.no_grad()
def test_shifted_key_init_makes_a_fresh_model_binding_ready_in_the_head_that_reads_two_back():
    """Key head h reads t - h as well as t, queries start in the keys' space: in a fresh model the head whose offset is
    the records' (`KEY k VAL v`: 2) already has each ask's query closest to its own record's key; the identity conv
    has no such head."""
    from hope_hf import HopeConfig, HopeForCausalLM

    torch.manual_seed(0)
    model = HopeForCausalLM(HopeConfig.from_preset("tiny", vocab_size=recall.VOCAB_SIZE))
    before = recall.memory_probe(model, 16, 128, 4, torch.Generator().manual_seed(0))[0]
    recall.shifted_key_init(model)
    c = model.config
    w = model.model.layers[1].memory.conv_weight
    assert [w[c.hidden_size + h * c.head_dim, -1 - h].item() for h in range(4)] == [1.0] * 4
    assert model.model.layers[1].memory.in_proj.weight[:c.hidden_size].equal(
        model.model.layers[1].memory.in_proj.weight[c.hidden_size:2 * c.hidden_size])
    after = recall.memory_probe(model, 16, 128, 4, torch.Generator().manual_seed(0))[0]
    assert after["cos_kq_match"][2] > after["cos_kq_other"][2] + 0.3
    assert all(abs(m - o) < 0.1 for m, o in zip(before["cos_kq_match"], before["cos_kq_other"]))


@pytest.mark.parametrize("kind", ["hope", "llama"])
def test_query_warmup_zeroes_the_query_paths_gradient_only_while_it_lasts(kind):
    from benchmarks import common
    from hope_hf import HopeConfig

    config = HopeConfig.from_preset("tiny", vocab_size=recall.VOCAB_SIZE)
    model = common.build(kind, config, 0, 128)
    ids, labels, _ = recall.make_data(2, 64, (2,), torch.Generator().manual_seed(0))
    hook = recall.query_warmup(model, 3)
    held = recall.query_parameters(model)
    assert len(held) == (8 if kind == "hope" else 2)
    for step, zeroed in ((2, True), (3, False)):
        model.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        hook(step)
        assert all((p.grad[index] == 0).all() for p, index in held) == zeroed
        assert (held[0][0].grad[held[0][1]] != 0).any() != zeroed          # in_proj's q rows / the first q_proj
        if kind == "hope":                                              # the key stream's rows keep their gradient
            assert model.model.layers[0].memory.in_proj.weight.grad[config.hidden_size:].abs().sum() > 0


def test_first_layer_warmup_writes_the_first_layers_only_while_it_lasts():
    """The hook turns `memory_writes_first_layer` on for the first `steps` steps of a model configured without it
    (the default), and leaves a model configured with it alone; while on, a step moves the memories' W2 states."""
    from benchmarks import common
    from hope_hf import HopeConfig

    model = common.build("hope", HopeConfig.from_preset("tiny", vocab_size=recall.VOCAB_SIZE), 0, 128)
    assert model.config.memory_writes_first_layer is False
    hook = recall.first_layer_warmup(model, 3)
    ids = recall.make_data(1, 64, (2,), torch.Generator().manual_seed(0))[0]
    moved = []
    for step in range(4):
        state = model(input_ids=ids, use_cache=True).past_key_values.get_state(0)
        W2 = state["mem"].get("W2")
        moved.append(W2 is not None and not torch.equal(W2[0], model.model.layers[0].memory.mem_W2))
        hook(step)
    assert moved == [True, True, True, False]          # after the warm-up the state holds no W2 at all
    on = common.build("hope", HopeConfig.from_preset("tiny", vocab_size=recall.VOCAB_SIZE,
                                                    memory_writes_first_layer=True), 0, 128)
    hook = recall.first_layer_warmup(on, 1)
    hook(5)
    assert on.config.memory_writes_first_layer is True


@torch.no_grad()
def test_the_held_bank_memory_is_the_query_memory():
    """`query_parameters` holds the bank's memory 4: changing its initial state moves the output memory's queries and
    leaves its keys and values alone."""
    from hope_hf import HopeConfig, HopeForCausalLM

    torch.manual_seed(0)
    model = HopeForCausalLM(HopeConfig.from_preset("tiny", vocab_size=recall.VOCAB_SIZE)).eval()
    ids, _, _ = recall.make_data(2, 64, (2,), torch.Generator().manual_seed(0))

    def kqv():
        with recall.capture_output_memory_inputs() as calls:
            model(input_ids=ids, use_cache=False)
        return calls[0][:3]

    before = kqv()
    held = [p for p, index in recall.query_parameters(model) if isinstance(index, tuple)]
    layers = model.model.layers
    assert {id(p) for p in held} == {id(m) for layer in layers for m in (layer.memory.bank_W1, layer.memory.bank_W2)}
    model.model.layers[0].memory.bank_W1[:, 4].normal_(0, 0.5)            # M_q,0 leaves the identity
    (k0, q0, v0), (k1, q1, v1) = before, kqv()
    assert k0.equal(k1) and v0.equal(v1) and not q0.equal(q1)
