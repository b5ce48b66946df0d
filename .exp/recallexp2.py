import sys, json, time, math, torch
from benchmarks import recall, common
from hope_hf import HopeConfig
if __name__ == "__main__":
    torch.set_num_threads(1)
    seed = int(sys.argv[1]); over = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    streamact = over.pop("streamact", "silu")
    if streamact == "linear":   # no SiLU on the q/k/v/gate streams (the output gate keeps its SiLU)
        import torch.nn.functional as TF
        from hope_hf import modeling_hope as MH
        class _F2:
            def __getattr__(self, name):
                return getattr(TF, name)

            @staticmethod
            def silu(x):
                return x if x.shape[-1] in MH_streams else TF.silu(x)
        MH.F = _F2()
    qkinit = over.pop("qkinit", "no")
    read = over.pop("read", "full")
    over_center = over.pop("center", "no")
    qfreeze = over.pop("qfreeze", 0)
    import torch.nn.functional as F
    if read != "full":   # the output memory's read without its identity passthrough (noskip) or without M_0 (delta)
        from hope_hf import modeling_hope as MH, memory_hope as MM
        _orig_om = MH.output_memory

        def _om(params, state, k, v, q, *a, **kw):
            o, st = _orig_om(params, state, k, v, q, *a, **kw)
            if read == "noskip":
                return o - q, st
            return o - MM.mlp_memory(params["W1"][None, :, 0], params["W2"][None, :, 0], q), st
        MH.output_memory = _om
    traj = over.pop("traj", 0)
    conv = over.pop("conv", "identity"); bs = over.pop("bs", 4); kind = over.pop("model", "hope"); lr = over.pop("lr", 3e-3); curr = over.pop("curr", "yes")
    s = recall.settings(False, {"steps": steps, "batch_size": bs, "lr": lr})
    L = s["seq_len"]; lengths = [L * m for m in s["multiples"]]; pc = s["pair_counts"]
    config = HopeConfig.from_preset("tiny", vocab_size=recall.VOCAB_SIZE, pad_token_id=recall.PAD,
                                    bos_token_id=recall.BOS, eos_token_id=recall.EOS, **over)
    gen = torch.Generator().manual_seed(seed)
    if curr == "yes":
        ids, labels = recall.make_curriculum(s["steps"] * s["batch_size"], L, pc, gen)
    elif curr == "from2":   # stages P = 2, then 2/4, 2/4/8, then all with the passkey (copying never suffices alone)
        ids, labels = recall.make_curriculum(s["steps"] * s["batch_size"], L, (*pc[1:], pc[0]), gen)
    else:
        ids, labels, _ = recall.make_data(s["steps"] * s["batch_size"], L, pc, gen)
        perm = torch.randperm(ids.shape[0], generator=gen); ids, labels = ids[perm], labels[perm]
    tests = recall.eval_data(s, seed)
    MH_streams = (config.hidden_size * (4 if config.self_modifying else 3),)
    model = common.build(kind, config, seed, max(lengths))
    if conv != "identity":
        g = torch.Generator().manual_seed(seed + 77)
        for layer in model.model.layers:
            w = layer.memory.conv_weight
            K = w.shape[1]
            with torch.no_grad():
                if conv == "random":
                    w.copy_((torch.rand(w.shape, generator=g) * 2 - 1) / math.sqrt(K))
                elif conv.startswith("kback"):
                    # k stream (channels D..2D of q, k, v[, gate]) also reads token t-n: kback<n>
                    D = model.config.hidden_size
                    w[D:2 * D, -1 - int(conv[5:])] = 1.0
                elif conv.startswith("kheads"):
                    # general shift init: key head h reads token t-h (h mod K); "kheads" drops the current token
                    # for h > 0, "kheads_id" keeps it (t and t-h)
                    D, d = model.config.hidden_size, model.config.head_dim
                    for h in range(model.config.num_attention_heads):
                        off = h % K
                        if off and conv == "kheads":
                            w[D + h * d:D + (h + 1) * d, -1] = 0.0
                        w[D + h * d:D + (h + 1) * d, -1 - off] = 1.0
                elif conv == "kshift":      # H3-style: the k stream sums the previous K-1 tokens, not the current one
                    D = model.config.hidden_size
                    w[D:2 * D, :] = 1.0
                    w[D:2 * D, -1] = 0.0
                elif conv == "kmean":
                    D = model.config.hidden_size
                    w[D:2 * D, :] = 1.0
                elif conv.startswith("idnoise"):
                    sc = float(conv[7:] or 0.3)
                    w[:, :-1] = torch.randn(w.shape[0], K - 1, generator=g) * sc
    if qkinit != "no" and kind == "hope":   # the query stream's in_proj rows start equal to the key stream's
        D = model.config.hidden_size
        with torch.no_grad():
            for layer in model.model.layers:
                W = layer.memory.in_proj.weight
                W[:D].copy_(W[D:2 * D])
    center = over_center
    if center != "no":   # keys (and with "kq" queries) centred on their running mean over the sequence, renormalised
        from hope_hf import modeling_hope as MH2
        _orig_om2 = MH2.output_memory

        def _om2(params, state, k, v, q, eta, log_alpha, mask, *a, **kw):
            B, H, T, d = k.shape
            n0 = state.get("cnt", torch.zeros(B, 1, 1, 1, dtype=k.dtype))
            sums = {}
            n = n0 + torch.arange(1, T + 1, dtype=k.dtype).view(1, 1, T, 1)
            def cen(x, name):
                c = state.get(name, torch.zeros(B, H, 1, d, dtype=x.dtype)) + x.cumsum(2)
                sums[name] = c[:, :, -1:]
                return F.normalize(x - c / n, dim=-1)
            k = cen(k, "ksum")
            if center == "kq":
                q = cen(q, "qsum")
            if _probe_calls is not None:
                _probe_calls.append((k.detach(), q.detach(), v.detach(), eta.detach(), log_alpha.detach()))
            st = {kk: vv for kk, vv in state.items() if kk not in ("cnt", "ksum", "qsum")}
            o, new = _orig_om2(params, st, k, v, q, eta, log_alpha, mask, *a, **kw)
            return o, {**new, **sums, "cnt": n0 + T}
        MH2.output_memory = _om2
        _probe_calls = None
        import contextlib

        @contextlib.contextmanager
        def _capture():   # the probe sees the centred keys and queries
            nonlocal_calls = []
            globals()["_probe_calls"] = nonlocal_calls
            try:
                yield nonlocal_calls
            finally:
                globals()["_probe_calls"] = None
        recall.capture_output_memory_inputs = _capture
    if qfreeze and kind == "hope":   # the query path (in_proj/conv rows of the q stream, M_q's M_0) gets no gradient
        D = model.config.hidden_size     # for the first `qfreeze` training steps
        _steps = [0]
        model.register_forward_pre_hook(lambda m, a: _steps.__setitem__(0, _steps[0] + int(m.training)))

        def _mask_hook(sl):
            def h(g):
                if _steps[0] <= qfreeze:
                    g = g.clone(); g[sl] = 0
                return g
            return h
        for layer in model.model.layers:
            mem = layer.memory
            mem.in_proj.weight.register_hook(_mask_hook(slice(0, D)))
            mem.conv_weight.register_hook(_mask_hook(slice(0, D)))
            mem.bank_W1.register_hook(_mask_hook((slice(None), 4)))
            mem.bank_W2.register_hook(_mask_hook((slice(None), 4)))
    t = time.perf_counter()
    if traj:   # every `traj` steps: accuracy per P at L on 16 test sequences per P, and layer 0's query/key cosines
        small = recall.make_data(16 * len(pc), L, pc, torch.Generator().manual_seed(99))

        def probe_now(m, _blocks, _bs):
            e = recall.evaluate_length(m, *small, pc)
            p0 = recall.memory_probe(m, 16, L, 4, torch.Generator().manual_seed(5))[0] if kind == "hope" else {}
            return {"by_pairs": [round(e["accuracy_by_pairs"][str(p)], 2) for p in pc],
                    **{k: round(sum(v) / len(v), 2) for k, v in p0.items() if k in ("cos_q_between_asks",
                       "cos_kq_match", "cos_kq_other", "cos_k_between_records")}}
        common.evaluate = probe_now
    tr = common.train_lm(model, ids, s["steps"], batch_size=s["batch_size"], lr=s["lr"], seed=seed, labels=labels,
                         desc="train", shuffle=False, evals={"t": None} if traj else None, eval_every=traj or None)
    evals = [recall.evaluate_length(model, *tests[n], pc) for n in lengths]
    probe = [] if kind != "hope" else recall.memory_probe(model, 32, L, 4, torch.Generator().manual_seed(5))
    pr = [{k: [round(x, 2) for x in v] for k, v in p.items() if k in ("cos_kq_match", "cos_kq_other", "cos_q_between_asks", "eta_at_values")} for p in probe]
    print(json.dumps({"over": over, "streamact": streamact, "conv": conv, "bs": bs, "model": kind, "lr": lr, "curr": curr, "qkinit": qkinit, "read": read, "center": over_center, "qfreeze": qfreeze, "seed": seed, "steps": steps, "train_s": round(time.perf_counter() - t),
                      "acc": [round(e["accuracy"], 3) for e in evals],
                      "by_pairs": {p: [round(e["accuracy_by_pairs"][str(p)], 2) for e in evals] for p in pc},
                      "probe": pr, "traj": [[st, d["t"]] for st, d in tr.get("evals", [])] if traj else None}))
