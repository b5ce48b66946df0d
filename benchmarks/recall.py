"""In-context recall benchmark: synthetic passkey / associative recall trained at length L, tested at L, 2L and 4L,
Hope vs a parameter-matched LlamaForCausalLM, in one run.

    python -m benchmarks.recall [--quick] [--steps N] [--batch-size B] [--seq-len L] [--lr LR] [--out DIR]
                                [--multiples 1 2 4] [--pair-counts 1 2 4 8] [--eval-seqs N] [--seeds 0 1 2]

The task (`make_batch`, `make_data`). A 64-token vocabulary: ids 0/1/2 are pad/bos/eos (HopeConfig's defaults),
3/4/5 the markers KEY/VAL/QUERY, then 16 key ids, 16 value ids and 26 filler ids. A sequence of n tokens is BOS, a
body of random filler with P records `KEY k VAL v` dropped at random places (distinct keys, values drawn
independently, so two keys may share a value), then P records `QUERY k v` asking for every key of the body once, in
random order. Only the answers v after a query are scored (labels -100 everywhere else; HF shifts the labels, so v is
predicted from the position of k). The sequences are split evenly over P in `pair_counts` = (1, 2, 4, 8): P = 1 is a
passkey (copy the one value in the context), P > 1 needs the key -> value binding (a model that copies some value of
the context without it scores ~1/P). Accuracy = fraction of the queried values whose argmax prediction is right,
teacher-forced, one forward pass per batch in eval mode, over all answers and per P; chance is 1/16. Longer test
sequences keep the records and queries and add filler, so the distance between a record and its query grows with n
(records are placed uniformly: on average ~n/2). Also recorded per length: the answer loss, the share of answers
predicted as some value id, and the share predicted as a value that occurs earlier in the sequence.

Both models start from the same seed, train on the same freshly generated length-L sequences (each seen once) in the
same order, with AdamW, the same learning rate and warm-up + cosine schedule (`common.train_lm`) and the same
curriculum (`make_curriculum`, stages in `curriculum_stages` order: P = 2, then 2/4, 2/4/8, then all with the
passkey). Hope also starts from `shifted_key_init` (key head h also reads token t - h; queries start in the keys'
space), gets no gradient into its query path for the first `query_warmup` steps, and writes its memories' first
layers for the first `first_layer_warmup` steps (`first_layer_warmup`; fixed after, the default). Each piece was
measured in issue #10 (tiny, 2,000 steps, seeds 0/1/2; `benchmarks/recall_findings.md`): without them Hope's queries for
different records collapsed to one vector within the first 200 steps and it copied some value of the context
instead of binding (43.0% at 4L). Llama trains without the query warm-up, which only hurt it (its `q_proj` held for
800 steps: passkey 84% instead of 100%, all pairs at 4L 25.7% instead of 29.8%). Llama's RoPE table covers the
longest test length. The test sets come from other seeds, one per length. Small batches and many steps: in a
passkey-only probe (P = 1, L = 64) Hope learned the task in 1200 steps of 4 sequences and not at all in 300 steps of
16 (the same sequences). Hope tiny's CMS levels step every 64 and 256 tokens, so at L = 128 the 256-token level never
steps during training but does at 4L.

Writes `<out>/recall.json` (setup, per model: params, accuracies per test length overall and per P, answer loss,
training loss per step, median s/step; the target check "Hope >= 90% at 4L" as data) and `<out>/recall.png`
(accuracy vs test length overall and per P, training-loss curves), and prints a markdown table. `--quick` is a smoke
run: too few steps to learn the task.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks import common
from hope_hf import HopeConfig, modeling_hope

NAME = "recall"
PAD, BOS, EOS, KEY, VAL, QUERY = range(6)
N_KEYS, N_VALUES, N_FILLER = 16, 16, 26
KEYS = torch.arange(6, 6 + N_KEYS)
VALUES = torch.arange(6 + N_KEYS, 6 + N_KEYS + N_VALUES)
FILLER = torch.arange(6 + N_KEYS + N_VALUES, 6 + N_KEYS + N_VALUES + N_FILLER)
VOCAB_SIZE = 6 + N_KEYS + N_VALUES + N_FILLER  # 64
TARGET_ACC_AT_4L = 0.9
EVAL_BATCH = 8

# eval_seqs: test sequences per pair count and length
FULL = {"steps": 2000, "batch_size": 4, "seq_len": 128, "multiples": (1, 2, 4), "pair_counts": (1, 2, 4, 8),
        "lr": 3e-3, "eval_seqs": 64, "hope_config": {}, "seeds": (0, 1, 2), "curriculum": "pairs-first",
        "query_warmup": 800, "hope_init": "shifted-keys", "first_layer_warmup": 1200}
QUICK = {**FULL, "steps": 100, "eval_seqs": 8, "seeds": (0,), "query_warmup": 40, "first_layer_warmup": 60}
CURRICULA = ("pairs-first", "passkey-first", "none")
HOPE_INITS = ("shifted-keys", "default")
PER_SEED = ("accuracy", "answer_loss", "value_prediction_rate", "in_context_value_rate")


# ------------------------------------------------------------------------------------------------------ data


def make_batch(n_seqs: int, seq_len: int, pairs: int, queries: int, generator: torch.Generator):
    """(input_ids, labels), both [n_seqs, seq_len]: BOS, filler with `pairs` `KEY k VAL v` records at random places,
    then `queries` `QUERY k v` records for distinct keys of the body; labels hold v at each queried answer, else -100.
    """
    if not 1 <= queries <= pairs <= N_KEYS:
        raise ValueError(f"need 1 <= queries ({queries}) <= pairs ({pairs}) <= {N_KEYS}")
    body = seq_len - 1 - 3 * queries
    n_filler = body - 4 * pairs
    if n_filler < 0:
        raise ValueError(f"seq_len {seq_len} is too short for {pairs} pairs and {queries} queries")
    g = generator
    rows = torch.arange(n_seqs)[:, None]
    keys = KEYS[torch.rand(n_seqs, N_KEYS, generator=g).argsort(-1)[:, :pairs]]  # distinct keys, order of writing
    values = VALUES[torch.randint(N_VALUES, (n_seqs, pairs), generator=g)]
    # records and filler tokens are n_filler + pairs items in a random order: pick the records' item slots, sorted;
    # record i starts at its slot + 3 i (each earlier record is 3 tokens longer than one filler token)
    slots = torch.rand(n_seqs, n_filler + pairs, generator=g).argsort(-1)[:, :pairs].sort(-1).values
    starts = 1 + slots + 3 * torch.arange(pairs)
    ids = FILLER[torch.randint(N_FILLER, (n_seqs, seq_len), generator=g)]
    ids[:, 0] = BOS
    ids[rows, starts], ids[rows, starts + 1], ids[rows, starts + 2], ids[rows, starts + 3] = KEY, keys, VAL, values
    asked = torch.rand(n_seqs, pairs, generator=g).argsort(-1)[:, :queries]  # which records, in asking order
    q0 = 1 + body + 3 * torch.arange(queries)
    ids[rows, q0], ids[rows, q0 + 1], ids[rows, q0 + 2] = QUERY, keys.gather(1, asked), values.gather(1, asked)
    labels = torch.full_like(ids, -100)
    labels[rows, q0 + 2] = ids[rows, q0 + 2]
    return ids, labels


def group_sizes(n_seqs: int, groups: int) -> list[int]:
    return [n_seqs // groups + (i < n_seqs % groups) for i in range(groups)]


def make_data(n_seqs: int, seq_len: int, pair_counts, generator: torch.Generator):
    """(input_ids, labels, pairs): `n_seqs` sequences split evenly over `pair_counts` (in that order), each with as
    many queries as pairs (every key asked once); `pairs` [n_seqs] is each sequence's number of pairs."""
    sizes = group_sizes(n_seqs, len(pair_counts))
    parts = [make_batch(n, seq_len, p, p, generator) for n, p in zip(sizes, pair_counts)]
    pairs = torch.cat([torch.full((n,), p) for n, p in zip(sizes, pair_counts)])
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]), pairs


def make_curriculum(n_seqs: int, seq_len: int, pair_counts, generator: torch.Generator):
    """(input_ids, labels) in training order: len(pair_counts) equal stages, stage j drawn from the pair counts
    `pair_counts[:j + 1]` (one more pair count per stage, in the order given), shuffled within each stage."""
    sizes = group_sizes(n_seqs, len(pair_counts))
    ids, labels = [], []
    for j, n in enumerate(sizes):
        x, y, _ = make_data(n, seq_len, pair_counts[:j + 1], generator)
        perm = torch.randperm(n, generator=generator)
        ids.append(x[perm])
        labels.append(y[perm])
    return torch.cat(ids), torch.cat(labels)


def curriculum_stages(pair_counts, curriculum: str):
    """The pair counts in the order `make_curriculum` adds them: "pairs-first" moves the passkey (P = 1) last, so
    every stage needs the key -> value binding (copying the one value answers a passkey, and a model that first
    learns to copy keeps copying: session 20 of issue #10); "passkey-first" keeps `pair_counts`' order."""
    if curriculum == "pairs-first":
        return [p for p in pair_counts if p != 1] + [p for p in pair_counts if p == 1]
    return list(pair_counts)


# ----------------------------------------------------------------------------------------- training recipe


def shifted_key_init(model) -> None:
    """Hope's initialisation for in-context recall (issue #10): in every layer, key head h also reads token
    t - (h mod conv_size) through the causal conv (head 0 only the current token), and the query stream's `in_proj`
    rows start equal to the key stream's. At step 0 a query then matches the key written h tokens after the same
    token in head h, for every offset the conv reaches: no offset is chosen for the task (its `KEY k VAL v` records
    need 2). With the identity conv the keys cannot see the key token at the value's position, and the queries had
    no gradient towards the keys: they collapsed to one vector on every seed."""
    c = model.config
    H, K = c.num_attention_heads, c.conv_size
    with torch.no_grad():
        for layer in model.model.layers:
            mem = layer.memory
            conv = mem.conv_weight.view(mem.n_streams, H, c.head_dim, K)    # streams q, k, v(, gate); taps t-K+1..t
            for h in range(H):
                conv[1, h, :, -1 - h % K] = 1.0
            proj = mem.in_proj.weight.view(mem.n_streams, c.hidden_size, c.hidden_size)
            proj[0] = proj[1]


def query_parameters(model) -> list:
    """[(parameter, index)] of the query path: Hope's q stream (its `in_proj` and conv rows, the initial state M_q,0
    of the self-modifying query memory), Llama's `q_proj`."""
    if model.config.model_type != "hope":
        return [(layer.self_attn.q_proj.weight, slice(None)) for layer in model.model.layers]
    c, out = model.config, []
    for layer in model.model.layers:
        mem = layer.memory
        out += [(mem.in_proj.weight, slice(0, c.hidden_size)), (mem.conv_weight, slice(0, c.hidden_size))]
        if c.self_modifying and c.adaptive_query:                       # M_q is the bank's fifth memory
            out += [(mem.bank_W1, (slice(None), 4)), (mem.bank_W2, (slice(None), 4))]
    return out


def query_warmup(model, steps: int):
    """An `after_backward` hook for `common.train_lm`: no gradient into the query path for the first `steps` steps.
    Early in training the answer loss mostly asks for "some value", the same gradient at every asking position, and
    the cheapest way to give it is one query for every ask: without the warm-up the queries of different asks
    collapsed (cos 0.98-0.99) inside the learning-rate warm-up on every seed, and never came apart."""
    params = query_parameters(model)

    def hook(step: int):
        if step < steps:
            for p, index in params:
                if p.grad is not None:
                    p.grad[index] = 0
    return hook


def first_layer_warmup(model, steps: int):
    """An `after_backward` hook for `common.train_lm`: a Hope model whose config fixes its memories' first layers
    (`memory_writes_first_layer=False`, the default) writes them in context for the first `steps` steps too, then
    trains as configured. With the output memory's first layer fixed throughout, seed 2 did not learn to bind
    (seeds 0 / 1 / 2: 91.2 / 78.6 / 47.0% at 4L); with every first layer written for the first 1,200 of 2,000 steps,
    83.9 / 95.6 / 99.0%, and all three stable out to 32L (`.exp/recall_stability.py`, session 23). A model configured
    to write them is left as it is."""
    fixed = not model.config.memory_writes_first_layer and steps > 0
    if fixed:
        model.config.memory_writes_first_layer = True

    def hook(step: int):
        if fixed and step + 1 >= steps:
            model.config.memory_writes_first_layer = False
    return hook


# ------------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def recall_eval(model, ids: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH) -> dict:
    """Teacher-forced argmax over the scored answers: correct count, summed cross-entropy (nats), how many predictions
    are a value id, and how many are a value id that occurs earlier in the sequence."""
    was_training = model.training
    model.eval()
    n = {"answers": 0, "correct": 0, "loss_sum": 0.0, "value": 0, "in_context": 0}
    for i in range(0, len(ids), batch_size):
        x, y = ids[i:i + batch_size], labels[i:i + batch_size, 1:]
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        rows, cols = (y != -100).nonzero(as_tuple=True)            # the answer at position cols + 1 of row rows
        pred, target = logits[rows, cols].argmax(-1), y[rows, cols]
        is_value = (pred >= VALUES[0]) & (pred <= VALUES[-1])
        earlier = ((x[rows] == pred[:, None]) & (torch.arange(x.shape[1]) <= cols[:, None])).any(-1)
        n["answers"] += len(target)
        n["correct"] += (pred == target).sum().item()
        n["loss_sum"] += F.cross_entropy(logits[rows, cols], target, reduction="sum").item()
        n["value"] += is_value.sum().item()
        n["in_context"] += (is_value & earlier).sum().item()
    model.train(was_training)
    return n


def evaluate_length(model, ids, labels, pairs, pair_counts) -> dict:
    """Accuracy etc. over all answers of one test length, and accuracy per pair count."""
    per = {p: recall_eval(model, ids[pairs == p], labels[pairs == p]) for p in pair_counts}
    tot = {k: sum(d[k] for d in per.values()) for k in per[pair_counts[0]]}
    return {"accuracy": tot["correct"] / tot["answers"], "answer_loss": tot["loss_sum"] / tot["answers"],
            "value_prediction_rate": tot["value"] / tot["answers"],
            "in_context_value_rate": tot["in_context"] / tot["answers"], "answers": tot["answers"],
            "accuracy_by_pairs": {str(p): d["correct"] / d["answers"] for p, d in per.items()}}


@contextlib.contextmanager
def capture_output_memory_inputs():
    """Record (k, q, v, eta, log_alpha) [B, H, T(, d)] of every output-memory call (one per layer and span) while
    active."""
    calls, original = [], modeling_hope.output_memory

    def spy(params, state, k, v, q, eta, log_alpha, *args, **kwargs):
        calls.append((k.detach(), q.detach(), v.detach(), eta.detach(), log_alpha.detach()))
        return original(params, state, k, v, q, eta, log_alpha, *args, **kwargs)

    modeling_hope.output_memory = spy
    try:
        yield calls
    finally:
        modeling_hope.output_memory = original


@torch.no_grad()
def memory_probe(model, n_seqs: int, seq_len: int, pairs: int, generator: torch.Generator) -> list[dict]:
    """What the trained output memory does on `pairs`-pair sequences, per layer and head: the write rate eta at the
    value tokens of the records and on average, the mean retention alpha, and the cosine between the key written at a
    record's value token and the query read at the position asking for it (`cos_kq_match`) or at a position asking
    for another record (`cos_kq_other`). A memory that binds keys to values has cos_kq_match near 1 above cos_kq_other.
    Collapse checks: the mean cosine between the queries of two asks of one sequence (`cos_q_between_asks`), between
    the keys written at two records (`cos_k_between_records`) and between their values v (`cos_v_between_records`);
    near 1 means the memory cannot tell the records (or their values) apart, whatever the gates do.
    """
    ids, _ = make_batch(n_seqs, seq_len, pairs, pairs, generator)
    was_training = model.training
    model.eval()
    with capture_output_memory_inputs() as calls:
        model(input_ids=ids, use_cache=False)
    model.train(was_training)
    n_layers = len(model.model.layers)
    rows = torch.arange(n_seqs)[:, None]
    value_pos = (ids == VAL).nonzero()[:, 1].view(n_seqs, pairs) + 1            # records in order of writing
    ask_pos = (ids == QUERY).nonzero()[:, 1].view(n_seqs, pairs) + 1            # the asked key, in asking order
    asked = (ids[rows, ask_pos][:, :, None] == ids[rows, value_pos - 2][:, None, :]).float()  # [n, ask, record]
    out = []
    for layer in range(n_layers):
        k, q, v, eta, log_alpha = (torch.cat(x, 2) for x in zip(*calls[layer::n_layers]))
        kw = k.permute(0, 2, 1, 3)[rows, value_pos]                              # [n, pairs, H, d]
        qr = q.permute(0, 2, 1, 3)[rows, ask_pos]
        cos = torch.einsum("nahd,nrhd->nhar", qr, kw)                           # [n, H, ask, record]
        match = (cos * asked[:, None]).sum((0, 2, 3)) / asked.sum()
        other = (cos * (1 - asked[:, None])).sum((0, 2, 3)) / max((1 - asked).sum().item(), 1)
        vw = F.normalize(v.permute(0, 2, 1, 3)[rows, value_pos], dim=-1)
        out.append({"eta_at_values": eta.permute(0, 2, 1)[rows, value_pos].mean((0, 1)).tolist(),
                    "eta_mean": eta.mean((0, 2)).tolist(), "alpha_mean": log_alpha.exp().mean((0, 2)).tolist(),
                    "cos_kq_match": match.tolist(), "cos_kq_other": other.tolist(),
                    "cos_kq_same_position": (k * q).sum(-1).mean((0, 2)).tolist(),
                    "cos_q_between_asks": _mean_cos_between(qr).tolist(),
                    "cos_k_between_records": _mean_cos_between(kw).tolist(),
                    "cos_v_between_records": _mean_cos_between(vw).tolist()})
    return out


def _mean_cos_between(x):
    """Mean cosine between the unit vectors x [n, P, H, d] of different items of one sequence, per head [H]."""
    cos = torch.einsum("nahd,nbhd->nhab", x, x)
    P = x.shape[1]
    return (cos.sum((-1, -2)) - cos.diagonal(dim1=-2, dim2=-1).sum(-1)).mean(0) / (P * P - P)


# ---------------------------------------------------------------------------------------------------- the run


def settings(quick: bool, overrides: dict) -> dict:
    s = common.settings(FULL, QUICK, quick, overrides)
    s["multiples"], s["pair_counts"] = [int(m) for m in s["multiples"]], [int(p) for p in s["pair_counts"]]
    s["seeds"] = [int(x) for x in s["seeds"]]
    for key, allowed in (("curriculum", CURRICULA), ("hope_init", HOPE_INITS)):
        if s[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {s[key]!r}")
    for key in ("query_warmup", "first_layer_warmup"):
        if int(s[key]) < 0:
            raise ValueError(f"{key} must be >= 0 steps, got {s[key]}")
    return s


def run(quick: bool = False, out=common.RESULTS, **overrides) -> dict:
    """Train both models at `seq_len`, test at `seq_len` x each of `multiples`, once per seed; write and return the
    results (per seed, and their mean with the min and max over the seeds).

    Settings (`FULL`, `QUICK` with `quick`, then `overrides`): steps, batch_size, seq_len (a multiple of 64), multiples,
    pair_counts, lr, eval_seqs (test sequences per pair count and length), hope_config (HopeConfig overrides of the
    tiny preset, e.g. {"memory_lr_max": 1.0}), seeds (each seed: its own training data, test sets and
    initialisation), curriculum (`CURRICULA`: train on `make_curriculum`'s stages in `curriculum_stages` order, or
    "none": shuffled `make_data`), query_warmup (steps without gradient into Hope's query path, `query_warmup`),
    first_layer_warmup (steps during which Hope's memories also write their first layer, `first_layer_warmup`),
    hope_init ("shifted-keys": `shifted_key_init`, or "default").
    Runs on one torch thread unless BENCH_THREADS says otherwise."""
    s = settings(quick, overrides)
    threads = torch.get_num_threads()
    if not os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(1)  # tiny models: as fast, and 2 threads on 2 shared cores ran a quick run 7x slower
    try:
        return _run(quick, out, s)
    finally:
        torch.set_num_threads(threads)


def hope_config(s: dict) -> HopeConfig:
    """The tiny preset on the task's vocabulary, with `s["hope_config"]`'s overrides (Llama is matched to it)."""
    return HopeConfig.from_preset("tiny", vocab_size=VOCAB_SIZE, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                                  **s["hope_config"])


def training_data(s: dict, seed: int):
    """(input_ids, labels) of one seed's training run, in training order (`s["curriculum"]`)."""
    n, L, pc, gen = s["steps"] * s["batch_size"], s["seq_len"], s["pair_counts"], torch.Generator().manual_seed(seed)
    if s["curriculum"] == "none":
        return make_data(n, L, pc, gen)[:2]
    return make_curriculum(n, L, curriculum_stages(pc, s["curriculum"]), gen)


def eval_data(s: dict, seed: int) -> dict:
    """{length: (input_ids, labels, pairs)} of one seed's test sets, each from its own generator."""
    pc = s["pair_counts"]
    return {n: make_data(s["eval_seqs"] * len(pc), n, pc, torch.Generator().manual_seed(1_000_003 * (seed + 1) + n))
            for n in (s["seq_len"] * m for m in s["multiples"])}


def train_model(kind: str, config, s: dict, seed: int, ids, labels, max_len: int, desc: str | None = None):
    """A "hope" or "llama" model built from `seed` and trained on (ids, labels) with the benchmark's recipe (Hope:
    `s["hope_init"]` and the query warm-up): returns (model, `common.train_lm`'s result)."""
    model = common.build(kind, config, seed, max_len)
    hope = kind == "hope"
    if hope and s["hope_init"] == "shifted-keys":
        shifted_key_init(model)
    tr = common.train_lm(model, ids, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed, labels=labels,
                         desc=f"train {kind}" if desc is None else desc, shuffle=s["curriculum"] == "none",
                         after_backward=_both(query_warmup(model, s["query_warmup"]),
                                              first_layer_warmup(model, s["first_layer_warmup"])) if hope else None)
    return model, tr


def _both(*hooks):
    def hook(step: int):
        for h in hooks:
            h(step)
    return hook


def _train_and_test(config, s: dict, seed: int) -> dict:
    """Both models trained and tested with one seed: {kind: per-model results}."""
    L = s["seq_len"]
    lengths = [L * m for m in s["multiples"]]
    pc = s["pair_counts"]
    train_ids, train_labels = training_data(s, seed)
    tests = eval_data(s, seed)
    models = {}
    for kind in tqdm(("hope", "llama"), desc=f"{NAME} seed {seed}"):
        start = time.perf_counter()
        model, tr = train_model(kind, config, s, seed, train_ids, train_labels, max(lengths))
        r = {"params": common.n_params(model), "train_loss": tr["train_loss"], "steps_done": tr["steps_done"],
             "diverged": tr["diverged"], "median_step_s": tr["median_step_s"], "train_s": time.perf_counter() - start}
        if kind == "llama":
            r["intermediate_size"] = model.config.intermediate_size
        evals = [evaluate_length(model, *tests[n], pc) for n in lengths]
        for key in PER_SEED:
            r[key] = [e[key] for e in evals]
        r["accuracy_by_pairs"] = {str(p): [e["accuracy_by_pairs"][str(p)] for e in evals] for p in pc}
        if kind == "hope":
            r["memory_probe"] = memory_probe(model, s["eval_seqs"], L, max(pc),
                                             torch.Generator().manual_seed(2_000_003 * (seed + 1)))
        models[kind] = r
        del model
    return models


def aggregate(runs: list[dict]) -> dict:
    """Per model over the seeds' runs: the mean of every per-length measure, with `<measure>_min`/`_max`, and
    `accuracy_by_pairs` averaged; params, training loss curve and memory probe of the first seed; summed timings."""
    models = {}
    for kind, first in runs[0]["models"].items():
        ms = [r["models"][kind] for r in runs]
        m = {k: first[k] for k in ("params", "train_loss", "intermediate_size", "memory_probe") if k in first}
        m.update(steps_done=min(x["steps_done"] for x in ms), diverged=any(x["diverged"] for x in ms),
                 median_step_s=statistics.median_high(x["median_step_s"] for x in ms),
                 train_s=sum(x["train_s"] for x in ms))
        for key in PER_SEED:
            cols = list(zip(*(x[key] for x in ms)))
            m[key] = [sum(c) / len(c) for c in cols]
            m[f"{key}_min"], m[f"{key}_max"] = [min(c) for c in cols], [max(c) for c in cols]
        m["accuracy_by_pairs"] = {p: [sum(c) / len(c) for c in zip(*(x["accuracy_by_pairs"][p] for x in ms))]
                                  for p in first["accuracy_by_pairs"]}
        models[kind] = m
    return models


def _run(quick: bool, out, s: dict) -> dict:
    bench = common.Run(threads=1)  # honours BENCH_THREADS
    L = s["seq_len"]
    lengths = [L * m for m in s["multiples"]]
    config = hope_config(s)
    if any(n % config.span_size for n in lengths):
        raise ValueError(f"every length must be a multiple of Hope's smallest CMS chunk {config.span_size}: {lengths}")
    pc = s["pair_counts"]
    answers_per_step = s["batch_size"] * sum(pc) / len(pc)
    results = {"setup": {"quick": quick, "preset": "tiny", "vocab_size": VOCAB_SIZE, **s,
                         "train_seq_len_tokens": L, "test_lengths_tokens": lengths,
                         "train_sequences": s["steps"] * s["batch_size"], "tokens_per_step": s["batch_size"] * L,
                         "mean_scored_answers_per_step": answers_per_step,
                         "test_answers_per_length": s["eval_seqs"] * sum(pc),
                         "n_keys": N_KEYS, "n_values": N_VALUES, "n_filler": N_FILLER,
                         "chance_accuracy": 1 / N_VALUES, "eval_batch_size": EVAL_BATCH,
                         "optimizer": "AdamW (betas 0.9, 0.95), weight decay 0.01",
                         "schedule": "linear warm-up over 10% of the steps, then cosine to 0.1x", "grad_clip": 1.0},
               "runs": [{"seed": seed, "models": _train_and_test(config, s, seed)} for seed in s["seeds"]]}
    results["models"] = aggregate(results["runs"])
    results["no_binding_accuracy"] = no_binding_reference(L, pc)
    i = s["multiples"].index(4) if 4 in s["multiples"] else len(lengths) - 1  # 4L, else the longest test length
    for kind in ("hope", "llama"):
        results[f"{kind}_acc_at_4L"] = results["models"][kind]["accuracy"][i]
    results.update({"target_length_multiple": s["multiples"][i], "target_hope_acc_at_4L": TARGET_ACC_AT_4L,
                    "target_met": bool(results["hope_acc_at_4L"] >= TARGET_ACC_AT_4L)})
    common.write_results(out, NAME, bench.finish(results), plot)
    return results


# ------------------------------------------------------------------------------------------------ reporting


def plot(results: dict, path):
    plt = common.pyplot()
    s, models = results["setup"], results["models"]
    lengths = s["test_lengths_tokens"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for c, (kind, m) in enumerate(models.items()):
        a.plot(lengths, m["accuracy"], "o-", color=f"C{c}", lw=2, label=f"{kind} ({m['params'] / 1e3:.0f}k), all")
        for j, (p, acc) in enumerate(m["accuracy_by_pairs"].items()):
            a.plot(lengths, acc, ls=":", marker="os^vD"[j % 5], ms=4, color=f"C{c}", alpha=0.6,
                   label=f"{kind}, {p} pair{'s' if p != '1' else ''}")
        loss = torch.tensor(m["train_loss"])
        w = max(1, len(loss) // 40)  # moving average over 2.5% of the steps
        smooth = loss.unfold(0, w, 1).mean(-1) if len(loss) >= w else loss
        b.plot(range(1, len(loss) + 1), loss, color=f"C{c}", alpha=0.15, lw=0.5)
        b.plot(range(w, w + len(smooth)), smooth, color=f"C{c}", lw=1.2, label=f"{kind} (mean of {w} steps)")
    a.axhline(s["chance_accuracy"], color="gray", ls="--", lw=0.8, label="chance (1/16)")
    a.axhline(results["target_hope_acc_at_4L"], color="green", ls="--", lw=0.8, label="target, Hope at 4L")
    a.set_xscale("log", base=2)
    a.set_xticks(lengths, [f"{n}\n({m}L)" for n, m in zip(lengths, s["multiples"])])
    a.minorticks_off()
    a.set_ylim(0, 1.02)
    a.set_xlabel("test sequence length (tokens)")
    a.set_ylabel("recall accuracy (teacher-forced argmax)")
    a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    b.set_xlabel("step")
    b.set_ylabel("training loss on the answers (nats)")
    b.axhline(torch.log(torch.tensor(float(N_VALUES))).item(), color="gray", ls="--", lw=0.8, label="ln 16")
    b.legend(fontsize=8)
    hope = (f"\nHope: {s['hope_init']} init, no gradient into its query path for {s['query_warmup']} steps"
            if "hope_init" in s else "")
    if s.get("first_layer_warmup"):                                     # absent from results of before 2026-12-06
        hope += f", first layers written for {s['first_layer_warmup']} steps"
    fig.suptitle(f"Associative recall, {'/'.join(map(str, s['pair_counts']))} pairs, trained at {s['seq_len']} "
                 f"tokens: {s['steps']} steps x {s['batch_size']} sequences, lr {s['lr']:g}"
                 f"{_curriculum_label(s)}"
                 f"{', mean of seeds ' + ', '.join(map(str, s['seeds'])) if len(s.get('seeds', [])) > 1 else ''}"
                 f"{' (quick)' if s['quick'] else ''}{hope}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curriculum_label(s: dict) -> str:
    c = s.get("curriculum")
    c = {True: "passkey-first", False: "none"}.get(c, c)                # results of before 2026-12-06: a bool
    return "" if c in (None, "none") else f", {c} curriculum"


def no_binding_accuracy(ids: torch.Tensor, labels: torch.Tensor) -> dict:
    """Expected accuracy on these sequences of two strategies that do not bind keys to values: copy one of the records'
    values at random ("copy", 1/P where the values differ), or one not yet given as an answer ("copy_unanswered":
    every key is asked once and the teacher-forced answers stay in the context, so ask j has P - j + 1 candidates,
    H_P/P where the values differ). Values are drawn independently, so two keys may share one: both score a little
    more than that."""
    copy = unanswered = asks = 0.0
    for row, lab in zip(ids.tolist(), labels.tolist()):
        values = [row[i + 1] for i in range(len(row) - 1) if row[i] == VAL]
        left = list(values)
        for answer in (y for y in lab if y != -100):
            copy += values.count(answer) / len(values)
            unanswered += left.count(answer) / len(left)
            left.remove(answer)
            asks += 1
    return {"copy": copy / asks, "copy_unanswered": unanswered / asks}


def no_binding_reference(seq_len: int, pair_counts, n_seqs: int = 2000) -> dict:
    """`no_binding_accuracy` per pair count on `n_seqs` sequences of the benchmark's distribution (a fixed seed)."""
    gen = torch.Generator().manual_seed(7)
    return {str(p): no_binding_accuracy(*make_batch(n_seqs, seq_len, p, p, gen)) for p in pair_counts}


def markdown(results: dict) -> str:
    s = results["setup"]
    head = " | ".join(f"acc@{m}L ({n})" if m != 1 else f"acc@L ({n})"
                      for m, n in zip(s["multiples"], s["test_lengths_tokens"]))
    seeds = s.get("seeds", [s.get("seed")])
    lines = [f"| model | pairs | params | {head} |", "|---|---|---|" + "---|" * len(s["multiples"])]
    for kind, m in results["models"].items():
        spread = [f" ({lo:.0%}-{hi:.0%})" for lo, hi in zip(m["accuracy_min"], m["accuracy_max"])] if len(seeds) > 1 \
            else [""] * len(m["accuracy"])
        lines.append(f"| {kind} | all | {m['params']:,} | " + " | ".join(f"**{a:.1%}**{r}" for a, r in
                                                                       zip(m["accuracy"], spread)) + " |")
        for p, acc in m["accuracy_by_pairs"].items():
            lines.append(f"| {kind} | {p} | | " + " | ".join(f"{a:.1%}" for a in acc) + " |")
    base = {p: b for p, b in results.get("no_binding_accuracy", {}).items() if int(p) > 1}
    if base:                                                            # absent from results of before 2026-12-03
        lines.append("\nWithout any key -> value binding a model scores ~1/P by copying some value of the context, "
                     "and ~H_P/P by copying a value not yet answered (`no_binding_accuracy`, expected on the test "
                     "data: " + ", ".join(f"P = {p}: {b['copy']:.1%} / {b['copy_unanswered']:.1%}"
                                          for p, b in base.items())
                     + "); only accuracy above the second needs the binding.")
    probe = results["models"].get("hope", {}).get("memory_probe")
    if probe:
        lines.append("\nHope's output memory after training (`memory_probe`, per layer, mean over heads / best head): "
                     "cos(key written at a record's value, query asking for that record) vs the same for other "
                     "records; write rate eta at the records' values vs on average.")
        mean = lambda x: sum(x) / len(x)  # noqa: E731
        for i, p in enumerate(probe):
            best = max(range(len(p["cos_kq_match"])), key=lambda h: p["cos_kq_match"][h] - p["cos_kq_other"][h])
            lines.append(f"- layer {i}: cos match {mean(p['cos_kq_match']):.2f} vs other {mean(p['cos_kq_other']):.2f} "
                         f"(head {best}: {p['cos_kq_match'][best]:.2f} vs {p['cos_kq_other'][best]:.2f}); "
                         f"eta at values {mean(p['eta_at_values']):.3f} vs {mean(p['eta_mean']):.3f}; retention "
                         f"{mean(p['alpha_mean']):.4f}" + (
                             f"; cos between records' queries {mean(p['cos_q_between_asks']):.2f}, keys "
                             f"{mean(p['cos_k_between_records']):.2f}, values {mean(p['cos_v_between_records']):.2f}"
                             if "cos_q_between_asks" in p else ""))  # absent from results of before 2026-11-30
    if len(seeds) > 1:
        lines.insert(0, f"Mean over seeds {', '.join(map(str, seeds))} (min-max over the seeds); the probe is seed "
                        f"{seeds[0]}'s.\n")
    k = results["target_length_multiple"]
    lines.append(f"\nTarget: Hope >= {results['target_hope_acc_at_4L']:.0%} of the answers at {k}L "
                 f"({s['test_lengths_tokens'][s['multiples'].index(k)]} tokens); measured "
                 f"{results['hope_acc_at_4L']:.1%} (Llama {results['llama_acc_at_4L']:.1%}, chance "
                 f"{s['chance_accuracy']:.1%}): **{'met' if results['target_met'] else 'not met'}**.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: too few steps to learn the task")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="training length L, a multiple of 64 (the tiny preset's CMS chunk)")
    p.add_argument("--multiples", type=int, nargs="+", help="test lengths as multiples of L (default 1 2 4)")
    p.add_argument("--pair-counts", type=int, nargs="+", help="numbers of key-value pairs per sequence (default "
                   "1 2 4 8)")
    p.add_argument("--lr", type=float)
    p.add_argument("--curriculum", choices=CURRICULA, help="the order of the training data (default pairs-first: "
                   "stages P = 2, 2/4, 2/4/8, then all with the passkey; none: all pair counts shuffled)")
    p.add_argument("--query-warmup", type=int, help="steps without gradient into Hope's query path "
                   "(default 800; --quick: 40)")
    p.add_argument("--first-layer-warmup", type=int, help="steps during which Hope's memories also write their "
                   "first layer (default 1200; --quick: 60)")
    p.add_argument("--hope-init", choices=HOPE_INITS, help="Hope's key conv and query projection at step 0 (default "
                   "shifted-keys, see shifted_key_init)")
    p.add_argument("--eval-seqs", type=int, help="test sequences per pair count and length")
    p.add_argument("--seeds", type=int, nargs="+", help="one run per seed, reported as mean and min-max (default "
                   "0 1 2; --quick: 0)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results, --quick: .../quick)")
    a = p.parse_args(argv)
    a.out = a.out or (common.QUICK_RESULTS if a.quick else common.RESULTS)
    res = run(quick=a.quick, out=a.out, seeds=a.seeds, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len,
              multiples=a.multiples, pair_counts=a.pair_counts, lr=a.lr, eval_seqs=a.eval_seqs, curriculum=a.curriculum,
              query_warmup=a.query_warmup, first_layer_warmup=a.first_layer_warmup, hope_init=a.hope_init)
    print(markdown(res))


if __name__ == "__main__":
    main()
