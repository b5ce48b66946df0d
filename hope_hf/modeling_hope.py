"""Hope (Nested Learning, arXiv 2512.24695 §8): self-modifying Titans followed by a Continuum Memory System.

Hub-facing file: imports only torch/transformers and siblings with single-dot relative imports.

Forward pass layout (design.md §3-4). Each sample's real tokens are placed on a per-sample "frame" whose column
phase equals the sample's token count modulo the smallest CMS chunk, so chunk and CMS boundaries line up for every
sample whatever its padding or the split of the sequence across calls. The frame is processed span by span (one span
= the smallest CMS chunk): all layers for the span, then the final norm, logits and the CMS teach signals, then the
CMS commits of the levels whose chunk ended. That span loop is the only loop over the sequence in the fast path.
"""

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.generation import GenerationMode
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import can_return_tuple, logging

from .cache_hope import HopeCache, signature
from .configuration_hope import HopeConfig
from .memory_hope import (cms_grad, cms_grad_reference, cms_mlp, cms_preacts, init_memory_state, output_memory,
                          projection_memories)

logger = logging.get_logger(__name__)


def rms_norm(x, weight, eps):
    """RMSNorm computed in at least float32."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


class HopeRMSNorm(nn.Module):
    def __init__(self, size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def _depthwise(ext, weight, S):
    """y_t = sum_k weight[:, k] * ext_{t+k} for t < S (F.conv1d with groups=D, as K shifted products: cheaper on
    short spans, and fused by torch.compile). ext: [B, K-1+S, D]; weight: [D, K]."""
    weight = weight.to(ext.dtype)                         # (as conv1d under autocast: the activations' dtype)
    y = ext[:, :S] * weight[:, 0]
    for k in range(1, weight.shape[-1]):
        y = y + ext[:, k:k + S] * weight[:, k]
    return y


def causal_conv(x, mask, tail, weight):
    """Depthwise causal conv over each row's real tokens (contiguous in the frame), continuing from `tail`.

    x: [B, S, D]; mask: [B, S] or None (every position real); tail: [B, K-1, D] (the previous K-1 inputs);
    weight: [D, K]. Returns (y, tail)."""
    B, S, D = x.shape
    K = weight.shape[-1]
    if mask is None:
        ext = torch.cat([tail.to(x.dtype), x], 1)
        return _depthwise(ext, weight, S), ext[:, S:]
    n = mask.sum(1)
    lo = torch.where(n > 0, mask.int().argmax(1), torch.zeros_like(n))
    cols = torch.arange(S, device=x.device)
    packed = x.gather(1, (lo[:, None] + cols).clamp(max=S - 1)[..., None].expand(B, S, D))
    packed = packed * (cols[None] < n[:, None])[..., None]
    ext = torch.cat([tail.to(x.dtype), packed], 1)                                # [B, K-1+S, D]
    y = _depthwise(ext, weight, S)
    new_tail = ext.gather(1, (n[:, None] + torch.arange(K - 1, device=x.device))[..., None].expand(B, K - 1, D))
    y = y.gather(1, (cols[None] - lo[:, None]).clamp(min=0)[..., None].expand(B, S, D)) * mask[..., None]
    return y, new_tail


class HopeSelfModifyingMemory(nn.Module):
    """Self-modifying Titans (arXiv Eq. 86-89, 94-95, 97) with a causal conv, output norm and SiLU gate.

    Input streams (each with its conv): q, k, v, and with self-modification a fourth one read by the gate memories
    M_eta, M_alpha (Eq. 86 reads eta_t, alpha_t from the input, not from the keys). The projection memories start as
    the identity (W1 = 0: k, v, q are the streams themselves, as in Titans) and write at s_h eta_t, with a learned
    per-head scale s_h = sigmoid(bank_lr_logit_h) starting at `projection_lr_scale_init` (issue #10: the gate memories
    on the key stream, random initial memories and writes at the full shared rate each kept recall from being
    learned)."""

    def __init__(self, config: HopeConfig):
        super().__init__()
        D, H, d, h = config.hidden_size, config.num_attention_heads, config.head_dim, config.memory_hidden_size
        self.config = config
        self.norm = HopeRMSNorm(D, config.rms_norm_eps)
        self.n_streams = 4 if config.self_modifying else 3
        self.in_proj = nn.Linear(D, self.n_streams * D, bias=False)     # q, k, v(, gate) streams (Titans §4.4)
        self.conv_weight = nn.Parameter(torch.zeros(self.n_streams * D, config.conv_size))
        if config.self_modifying:
            n = 5 if config.adaptive_query else 4                        # k, v, eta, alpha[, q]
            self.bank_W1 = nn.Parameter(torch.zeros(H, n, d, h))          # meta-learned initial states M_box,0
            self.bank_W2 = nn.Parameter(torch.zeros(H, n, h, d))
            self.eta_w = nn.Parameter(torch.zeros(H, d))
            self.eta_b = nn.Parameter(torch.zeros(H))
            self.alpha_w = nn.Parameter(torch.zeros(H, d))
            self.alpha_b = nn.Parameter(torch.zeros(H))
            self.bank_lr_logit = nn.Parameter(torch.zeros(H))                # s_h = sigmoid(bank_lr_logit)
            if config.use_momentum:
                self.bank_beta_logit = nn.Parameter(torch.zeros(H))
        else:
            self.gate_logits = nn.Linear(D, 2 * H, bias=True)               # eta, alpha per head
        self.mem_W1 = nn.Parameter(torch.zeros(H, 1, d, h))
        self.mem_W2 = nn.Parameter(torch.zeros(H, 1, h, d))
        if config.use_momentum:
            self.mem_beta_logit = nn.Parameter(torch.zeros(H))
        self.out_norm_weight = nn.Parameter(torch.ones(d))
        self.gate_proj = nn.Linear(D, D, bias=False)
        self.out_proj = nn.Linear(D, D, bias=False)

    def _fn_config(self):
        c = self.config
        return {"projection_chunk_size": c.projection_chunk_size, "memory_chunk_size": c.memory_chunk_size,
                "memory_lr_max": c.memory_lr_max, "memory_objective": c.memory_objective, "use_dgd": c.use_dgd,
                "self_modifying": c.self_modifying, "memory_grad_clip": c.memory_grad_clip,
                "memory_writes_first_layer": c.memory_writes_first_layer}

    def init_state(self, batch_size, device, dtype):
        c = self.config
        state = {"conv": torch.zeros(batch_size, c.conv_size - 1, self.n_streams * c.hidden_size, device=device,
                                     dtype=dtype),
                 "mem": init_memory_state(self.mem_W1, self.mem_W2, batch_size, c.use_momentum,
                                          c.memory_writes_first_layer)}
        if c.self_modifying:
            state["bank"] = init_memory_state(self.bank_W1, self.bank_W2, batch_size, c.use_momentum,
                                              c.memory_writes_first_layer)
        return state

    def forward(self, x, state, mask, offset, reference=False, write=True):
        c = self.config
        B, S, D = x.shape
        H, d = c.num_attention_heads, c.head_dim
        xn = self.norm(x)
        z, conv_tail = causal_conv(self.in_proj(xn), mask, state["conv"], self.conv_weight)
        uq, uk, uv, *ug = F.silu(z).view(B, S, self.n_streams, H, d).permute(2, 0, 3, 1, 4)  # [B, H, S, d] each
        fn_cfg = self._fn_config()
        new_state = {"conv": conv_tail}
        wmask = mask if write else torch.zeros(B, S, dtype=torch.bool, device=x.device)  # False: read-only memories
        if c.self_modifying:
            params = {"W1": self.bank_W1, "W2": self.bank_W2, "eta_w": self.eta_w, "eta_b": self.eta_b,
                      "alpha_w": self.alpha_w, "alpha_b": self.alpha_b, "lr_scale": torch.sigmoid(self.bank_lr_logit),
                      "log_beta": F.logsigmoid(self.bank_beta_logit) if c.use_momentum else None}
            # M_k, M_v, M_q read their own streams; the gate memories M_eta, M_alpha read the gate stream
            streams = (uk, uv, ug[0], ug[0], uq) if c.adaptive_query else (uk, uv, ug[0], ug[0])
            k, v, q, eta, log_alpha, new_state["bank"] = projection_memories(
                params, state["bank"], torch.stack(streams, 2), wmask, offset, fn_cfg, reference)
            if q is None:
                q = F.normalize(uq, dim=-1)
        else:
            k, v, q = F.normalize(uk, dim=-1), uv, F.normalize(uq, dim=-1)
            g_eta, g_alpha = self.gate_logits(xn).transpose(1, 2).chunk(2, dim=1)     # [B, H, S]
            log_alpha = F.logsigmoid(g_alpha)
            eta = torch.minimum(c.memory_lr_max * torch.sigmoid(g_eta), (1 + log_alpha.exp()) / 2)
        mem_params = {"W1": self.mem_W1, "W2": self.mem_W2,
                      "log_beta": F.logsigmoid(self.mem_beta_logit) if c.use_momentum else None}
        o, new_state["mem"] = output_memory(mem_params, state["mem"], k, v, q, eta, log_alpha, wmask, offset, fn_cfg,
                                            reference)
        o = rms_norm(o, self.out_norm_weight, c.rms_norm_eps).transpose(1, 2).reshape(B, S, D)
        return self.out_proj(o * F.silu(self.gate_proj(xn))), new_state


class HopeCMSLevel(nn.Module):
    """One CMS level (NeurIPS Eq. 30): pre-norm SiLU-gated MLP with a residual, x + g MLP_theta(norm x). Its weights
    are the meta-learned initial state theta_0; the in-context fast weights live in the cache (Eq. 31). The output
    scale g (ReZero) starts at `cms_out_scale_init` = 0: a level that starts as a live MLP after the memory keeps the
    model from learning associative recall (measured in issue #10), one that starts silent grows as it helps."""

    def __init__(self, config: HopeConfig):
        super().__init__()
        D, I = config.hidden_size, config.cms_intermediate_size
        self.norm = HopeRMSNorm(D, config.rms_norm_eps)
        self.gate = nn.Parameter(torch.zeros(I, D))
        self.up = nn.Parameter(torch.zeros(I, D))
        self.down = nn.Parameter(torch.zeros(D, I))
        self.lr_logit = nn.Parameter(torch.zeros(()))                               # eta_l = softplus(lr_logit)
        self.out_scale = nn.Parameter(torch.zeros(()))                              # g

    def theta0(self):
        return (self.gate, self.up, self.down)

    def forward(self, x, theta):
        """Returns (x + g MLP_theta(norm x), the level's input packed with its pre-activations [.., D + 2 I]): the
        gradient sum of Eq. 31 reuses them (theta is constant until the chunk's commit); `unpack` splits them."""
        xin = self.norm(x)
        ab = cms_preacts(theta, xin)
        return x + self.out_scale * cms_mlp(theta, xin, ab), torch.cat([xin, *ab], -1)

    @property
    def packed_size(self):
        """Width of `forward`'s packed input, D + 2 I."""
        return self.gate.shape[1] + 2 * self.gate.shape[0]

    def unpack(self, packed):
        """`forward`'s packed input -> (x, (x W_gate^T, x W_up^T))."""
        I, D = self.gate.shape
        xin, *preacts = packed.split([D, I, I], -1)
        return xin, preacts


class HopeBlock(GradientCheckpointingLayer):
    """arXiv Eq. 94-97: x -> x + SelfModTitans(norm x) -> for each CMS level: x + MLP_l(norm x)."""

    def __init__(self, config: HopeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.memory = HopeSelfModifyingMemory(config)
        self.cms = nn.ModuleList(HopeCMSLevel(config) for _ in config.cms_chunk_sizes)
        self.cms_chunk_sizes = tuple(config.cms_chunk_sizes)

    def init_state(self, batch_size, device, dtype):
        state = self.memory.init_state(batch_size, device, dtype)
        state["cms"] = [{"x_pend": torch.zeros(batch_size, lvl.packed_size, device=device, dtype=dtype),
                         "commits": torch.zeros(batch_size, dtype=torch.long, device=device)} for lvl in self.cms]
        return state

    def forward(self, hidden, mask, *leaves, spec, offset, reference=False, write=True, active=(), static_count=None):
        """One span through the block, after the CMS updates its previous spans left due (NeurIPS Eq. 31).

        Flat tensor arguments and results, so that activation checkpointing (reentrant too) sees, and recomputes,
        everything the block does: `leaves`/`spec` flatten (layer state, teach, commit). `teach` = (level inputs,
        u) of the earlier positions whose teach signal is now known, or None: their gradient sums are added first
        (`_accumulate_levels`, for the `active` levels); `commit` = (token count, real) at a span start on the CMS grid,
        or None: the levels whose chunk ends there step (`_commit_levels`). Returns (hidden, out_spec, *out_leaves),
        out_leaves/out_spec the flattened (new_state, CMS level inputs of this span)."""
        layer_state, teach, commit = tree_unflatten(list(leaves), spec)
        cms = layer_state["cms"]
        if teach is not None:
            cms = self._accumulate_levels(cms, *teach, active, reference)
        if commit is not None:
            cms = self._commit_levels(cms, *commit, static_count)
        out, new_state = self.memory(hidden, layer_state, mask, offset, reference, write)
        hidden = hidden + out
        level_inputs = []
        for lvl, lstate in zip(self.cms, cms):
            hidden, xin = lvl(hidden, lstate.get("theta", lvl.theta0()))
            level_inputs.append(xin)
        new_state["cms"] = cms
        out_leaves, out_spec = tree_flatten((new_state, level_inputs))
        return (hidden if mask is None else hidden * mask[..., None], out_spec, *out_leaves)

    def cms_accumulate(self, cms_state, level_inputs, u, active, reference=False):
        """`_accumulate_levels` outside `forward` (what a call leaves due when its state outlives it). It reads the
        block's parameters, so sharded training registers it, like `init_state`, as an FSDP forward method."""
        return self._accumulate_levels(cms_state, level_inputs, u, active, reference)

    def static_due(self, count):
        """Which levels commit at a span start where every sample has read `count` tokens (a Python int)."""
        return [count > 0 and count % C == 0 for C in self.cms_chunk_sizes]

    # Both return new level states instead of changing their arguments (FSDP rebuilds the argument containers).

    def _accumulate_levels(self, cms_state, level_inputs, u, active, reference=False):
        """Add sum_t grad_theta <MLP_theta(x_t), u_t> of the given positions to each active level's pending sum
        (NeurIPS Eq. 31's f for the positions whose teach signal `u` is known)."""
        out = []
        for lvl, lv, packed, on in zip(self.cms, cms_state, level_inputs, active):
            lv = dict(lv)
            if on:
                xin, preacts = lvl.unpack(packed)
                theta = lv.get("theta", lvl.theta0())
                g = cms_grad_reference(theta, xin, u) if reference else cms_grad(theta, xin, u, preacts)
                lv["grad"] = g if "grad" not in lv else tuple(a + b for a, b in zip(lv["grad"], g))
            out.append(lv)
        return out

    def _commit_levels(self, cms_state, token_count, real, static_count=None):
        """NeurIPS Eq. 31: level l steps theta <- theta - eta_l g_l * sum(chunk) when the token count hits C_l (the
        level's output is g_l MLP_theta, so the gradient of <g_l MLP_theta(x_t), u_t> is g_l times the pending sum).
        `static_count`: every sample's count as a Python int, when known (no data-dependent branch)."""
        out = []
        static_due = self.static_due(static_count) if static_count is not None else None
        for i, (C_l, lvl, lv) in enumerate(zip(self.cms_chunk_sizes, self.cms, cms_state)):
            lv = dict(lv)
            out.append(lv)
            if "grad" not in lv or static_due is not None and not static_due[i]:
                continue
            do = real & (token_count > 0) & (token_count % C_l == 0)
            if static_count is None and not bool(do.any()):
                continue
            theta = lv.get("theta")
            if theta is None:                                  # materialise lazily at the first commit
                B = do.shape[0]
                theta = tuple(w.unsqueeze(0).expand(B, *w.shape) for w in lvl.theta0())
            lr = F.softplus(lvl.lr_logit) * lvl.out_scale
            if static_count is not None:                       # every sample commits: the sum starts again empty
                lv["theta"] = tuple(w - lr * g for w, g in zip(theta, lv.pop("grad")))
            else:
                sel = do[:, None, None]
                lv["theta"] = tuple(torch.where(sel, w - lr * g, w) for w, g in zip(theta, lv["grad"]))
                lv["grad"] = tuple(torch.where(sel, torch.zeros_like(g), g) for g in lv["grad"])
            lv["commits"] = lv["commits"] + do.long()
        return out


# transformers >= 5.24 names the cache of outputs and inputs `cache` (5.23: `past_key_values`)
CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


@dataclass
class HopeModelOutput(BaseModelOutputWithPast):
    """Base-model output in the `BaseModelOutputWithPast` order; the cache field is `past_key_values` (transformers
    5.23) or `cache` (>= 5.24), as in the parent class. `attentions` is always None (Hope has no attention).
    `logits` is filled only for `HopeForCausalLM` (the LM head runs inside the span loop for the CMS teach signals);
    `logits_mix` = W_out^T softmax(logits) per position (float32) only for its training loss (`LinearCrossEntropy`):
    with `logits_grad=False` on a fresh unpadded batch, where the teach signals computed it for every position."""

    logits: torch.FloatTensor | None = None
    logits_mix: torch.FloatTensor | None = None


class HopePreTrainedModel(PreTrainedModel):
    config: HopeConfig
    config_class = HopeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HopeBlock"]
    _is_stateful = True
    model_card_writer = None           # set by `import hope_hf` (hope_hf.cards.write_model_card); None on the Hub

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False                                   # the model builds its own HopeCache

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also write an `auto_map` for AutoConfig, AutoModel and AutoModelForCausalLM and copy the code files, so that
        `trust_remote_code=True` loads the checkpoint without hope_hf installed."""
        auto_map = {"AutoConfig": "configuration_hope.HopeConfig", "AutoModel": "modeling_hope.HopeModel",
                    "AutoModelForCausalLM": "modeling_hope.HopeForCausalLM"}
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **auto_map}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        card_writer = HopePreTrainedModel.model_card_writer
        if card_writer is not None and not os.path.exists(os.path.join(save_directory, "README.md")):
            card_writer(save_directory, self)
        return result

    def compile_blocks(self, recompile_limit: int = 64, **compile_kwargs):
        """Regional compilation: `torch.compile` every block in place (its memory, CMS levels and their in-context
        gradient sums and commits: the whole repeated region) and return the model. The blocks share their graphs, and
        a sequence needs a few variants of them (the spans before the first CMS gradient sums and commits, the spans
        that commit, a carried state), more than dynamo's default per-function recompile limit: the blocks run
        with that limit raised to `recompile_limit`. The span loop, teach signals and LM head stay eager. Measured
        (`benchmarks.speed`, session 30): 1.0 / 1.9 / 2.1x eager for `tiny` at 512 / 2,048 / 8,192 tokens, where
        `compile_memories` gave 1.3-1.5x. It also runs under activation checkpointing (`tests/test_compile.py`)."""
        for module in self.modules():
            if isinstance(module, HopeBlock):
                module.compile(**compile_kwargs)
            elif isinstance(module, HopeModel):
                module.block_recompile_limit = recompile_limit
        return self

    def compile_memories(self, **compile_kwargs):
        """Regional compilation: `torch.compile` every block's self-modifying memory in place (the repeated region,
        where most of the operators are) and return the model. All blocks and spans share a few graphs (a fresh state,
        a carried one, a padded span, evaluation), so compiling takes the same time at any sequence length, unlike
        `torch.compile(model)`, which unrolls every span; the span loop, CMS updates and LM head stay eager."""
        for module in self.modules():
            if isinstance(module, HopeSelfModifyingMemory):
                module.compile(**compile_kwargs)
        return self

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, HopeSelfModifyingMemory):
            c = self.config
            conv = torch.zeros_like(module.conv_weight)
            conv[:, -1] = 1.0                                                   # start as the identity
            init.copy_(module.conv_weight, conv)
            for W1, W2 in ((getattr(module, "bank_W1", None), getattr(module, "bank_W2", None)),
                           (module.mem_W1, module.mem_W2)):
                if W1 is not None:
                    init.normal_(W2, 0.0, 1.0 / math.sqrt(c.head_dim))
                    init.normal_(W1, 0.0, 0.5 / math.sqrt(c.memory_hidden_size))
            eta_b, alpha_b = memory_gate_biases(c)
            if c.self_modifying:
                init.zeros_(module.bank_W1)             # the projection memories start as the identity M(z) = z
                s = c.projection_lr_scale_init
                init.constant_(module.bank_lr_logit, math.log(s / (1 - s)))
                init.normal_(module.eta_w, 0.0, std)
                init.normal_(module.alpha_w, 0.0, std)
                init.copy_(module.eta_b, eta_b)
                init.copy_(module.alpha_b, alpha_b)
            else:
                init.copy_(module.gate_logits.bias, torch.cat([eta_b, alpha_b]).to(module.gate_logits.bias.device))
            for name in ("bank_beta_logit", "mem_beta_logit"):
                if hasattr(module, name):
                    init.zeros_(getattr(module, name))
            init.ones_(module.out_norm_weight)
        elif isinstance(module, HopeCMSLevel):
            init.normal_(module.gate, 0.0, std)
            init.normal_(module.up, 0.0, std)
            init.normal_(module.down, 0.0, std)
            init.constant_(module.lr_logit, math.log(math.expm1(self.config.cms_lr_init)))
            init.constant_(module.out_scale, self.config.cms_out_scale_init)


def memory_gate_biases(config):
    """Initial gate biases per head: eta = memory_lr_max sigmoid(eta_b) starts at `memory_lr_init`; the retention
    alpha = sigmoid(alpha_b) spans `memory_retention_init` = [low, high] over the heads, log-spaced in 1 - alpha
    (several time scales at once, as Mamba spreads its decay rates)."""
    H = config.num_attention_heads
    eta_b = torch.full((H,), math.log(config.memory_lr_init / (config.memory_lr_max - config.memory_lr_init)))
    lo, hi = (math.log1p(-a) for a in config.memory_retention_init)           # log(1 - alpha), lo >= hi
    forget = torch.exp(torch.linspace(lo, hi, H, dtype=torch.float64))
    return eta_b, torch.log((1 - forget) / forget).float()


def teach_signal(h, norm_weight, eps, W_out, target_rows, logits=None):
    """u_t = d CE(logits_t, y_{t+1}) / d h_t in closed form through the final RMSNorm and the LM head (detached).

    With g = W_out^T (softmax(logits) - onehot(y)) = W_out^T p - W_out[y] and n = w * h * r, r = rms(h)^-1:
    u = r (w * g) - (r^3 / D) h sum(w * g * h). Returns (u, W_out^T p): the mix (float32 or wider) is what the
    training loss reuses for its input gradient (`LinearCrossEntropy`)."""
    with torch.no_grad():
        dt = torch.promote_types(h.dtype, torch.float32)
        h, w, W = h.detach().to(dt), norm_weight.detach().to(dt), W_out.detach().to(dt)
        if logits is None:
            logits = rms_norm(h, w, eps) @ W.t()
        mix = torch.softmax(logits.detach().to(dt), -1) @ W
        g = mix - target_rows.detach().to(dt)
        r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        wg = w * g
        u = (r * wg - (r.pow(3) / h.shape[-1]) * h * (wg * h).sum(-1, keepdim=True)).to(target_rows.dtype)
        return u, mix


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of the logits h W^T against `targets` (rows equal to `ignore_index` count nothing) from
    the logits already computed for the teach signals (detached). Backward, with d = softmax - onehot(y): dW = d^T h
    (a vocabulary-sized product) and dh = d W (another), or mix - W[y] when the teach signals' mix = W^T softmax is
    given ([N, D]: the product is already done). `keep`: the logits are kept for backward (as cross_entropy keeps its
    log-softmax); else none is, and backward recomputes them `chunk` rows at a time from h and W (one product more;
    for activation checkpointing). Both passes go `chunk` rows at a time through one reused [chunk, vocab] buffer:
    fresh vocabulary-sized temporaries cost page faults (the allocator maps and unmaps every large block)."""

    @staticmethod
    def forward(ctx, h, W, targets, logits, mix=None, keep=True, ignore_index=-100, chunk=1024):
        logits = logits.detach()
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        buf = logits.new_empty(min(chunk, logits.shape[0]), logits.shape[1], dtype=torch.float32)
        for i in range(0, logits.shape[0], chunk):                   # log sum exp = m + log sum exp(z - m)
            z = logits[i:i + chunk]
            m = z.amax(-1, keepdim=True).float()
            e = torch.sub(z, m, out=buf[:z.shape[0]]).exp_()
            lse[i:i + chunk] = e.sum(-1).log_().add_(m[:, 0])
        valid = targets != ignore_index
        picked = logits.gather(-1, targets.clamp(min=0)[:, None])[:, 0].float()
        ctx.save_for_backward(h, W, targets, lse, logits if keep else None, mix)
        ctx.ignore_index, ctx.chunk = ignore_index, chunk
        return torch.where(valid, lse - picked, 0).sum()

    @staticmethod
    def backward(ctx, grad):
        h, W, targets, lse, logits, mix = ctx.saved_tensors
        scale = grad * (targets != ctx.ignore_index)
        y = targets.clamp(min=0)
        if mix is None:
            dh = torch.empty_like(h)
        else:
            dh = ((mix - W[y].to(mix.dtype)) * scale[:, None]).to(h.dtype)
        dW = torch.zeros(W.shape, dtype=torch.float32, device=W.device)
        Wc, Wf = W.to(h.dtype), W.float()                      # (no copies when h and W are float32)
        buf = torch.empty(min(ctx.chunk, h.shape[0]), W.shape[0], dtype=torch.float32, device=h.device)
        for i in range(0, h.shape[0], ctx.chunk):
            rows = slice(i, i + ctx.chunk)
            hi = h[rows]
            b = buf[:hi.shape[0]]
            if logits is not None:
                d = torch.sub(logits[rows], lse[rows, None], out=b)
            elif hi.dtype == torch.float32:                             # recomputed straight into the buffer
                d = torch.mm(hi, Wc.t(), out=b).sub_(lse[rows, None])
            else:
                d = torch.sub(hi @ Wc.t(), lse[rows, None], out=b)
            d.exp_()                                                                   # softmax
            d.scatter_add_(1, y[rows, None], torch.full_like(d[:, :1], -1.0))       # - onehot(y)
            d.mul_(scale[rows, None])
            if mix is None:
                dh[rows] = (d @ Wf).to(h.dtype)
            torch.addmm(dW, d.t(), hi.float(), out=dW)                   # (addmm_ escapes FlopCounterMode)
        return dh, dW.to(W.dtype), None, None, None, None, None, None


def causal_lm_loss(hidden, W, logits, labels, shift_labels=None, num_items_in_batch=None, ignore_index=-100,
                   mix=None, keep=True, **kwargs):
    """transformers' ForCausalLMLoss (shifted labels, `ignore_index`, mean or sum / `num_items_in_batch`) through
    `LinearCrossEntropy`: `hidden` [B, T, D] (normed, on the graph), `logits` its detached logits, `mix` [B, T, D]
    their W^T softmax or None, `keep` whether backward keeps the logits or recomputes them."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    D, V = hidden.shape[-1], logits.shape[-1]
    targets = shift_labels.reshape(-1).to(hidden.device)
    total = LinearCrossEntropy.apply(hidden.reshape(-1, D), W, targets, logits.reshape(-1, V),
                                     None if mix is None else mix.reshape(-1, D), keep, ignore_index)
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum()
    return total / (num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else
                    num_items_in_batch)


@contextmanager
def _recompile_limit(limit):
    """dynamo's per-function recompile limit raised to at least `limit` inside (nothing for None or while tracing)."""
    if limit is None or torch.compiler.is_compiling():
        yield
        return
    config = torch._dynamo.config
    before = config.recompile_limit
    config.recompile_limit = max(limit, before)
    try:
        yield
    finally:
        config.recompile_limit = before


def _reading_back_breaks(t):
    """Whether reading `t`'s values back to the host would break what is running: a torch.compile or torch.export
    trace (a graph break) or a CUDA graph capture (a synchronisation, which capture forbids). The input value checks
    skip then, and an all-ones mask is not read (the general path)."""
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


class HopeModel(HopePreTrainedModel):
    def __init__(self, config: HopeConfig, own_head: bool = True):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(HopeBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = HopeRMSNorm(config.hidden_size, config.rms_norm_eps)
        if own_head and not config.tie_word_embeddings and config.cms_chunk_sizes:
            # the CMS teach signals read the LM head: a bare model (e.g. loaded from a causal-LM checkpoint, whose
            # `lm_head.weight` it picks up) keeps its own; HopeForCausalLM passes its lm_head instead
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.memory_impl = "fast"
        self.in_context_updates = True
        self.gradient_checkpointing = False
        self.block_recompile_limit = None       # the recompile limit while a compiled block runs (`compile_blocks`)
        self.checkpoint_span_groups = True     # with activation checkpointing: also checkpoint groups of spans
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_output_embeddings(self):
        return getattr(self, "lm_head", None)

    def set_output_embeddings(self, value):
        self.lm_head = value

    def set_in_context_updates(self, enabled: bool):
        """Switch the in-context writes (Titans memories and CMS commits) on or off; off, every memory keeps its
        meta-learned initial state and the model is a fixed network (the ablation baseline for in-context learning)."""
        self.in_context_updates = bool(enabled)

    def set_memory_impl(self, impl: str):
        """"fast" (chunk-parallel, default) or "reference" (token-by-token equations; for tests)."""
        if impl not in ("fast", "reference"):
            raise ValueError(f"memory_impl must be 'fast' or 'reference', got {impl!r}")
        self.memory_impl = impl

    # ---------------------------------------------------------------------------------------------- checks
    @property
    def blocks_checkpointed(self):
        """Whether the blocks run with activation checkpointing (`activation_checkpointing_enable`)."""
        return any(layer.gradient_checkpointing for layer in self.layers)

    def _check_inputs(self, input_ids, inputs_embeds, attention_mask):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
            if input_ids.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
                raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
            if (not _reading_back_breaks(input_ids) and input_ids.numel()
                    and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size)):
                raise ValueError(f"input_ids must lie in [0, {self.config.vocab_size}); got values in "
                                 f"[{int(input_ids.min())}, {int(input_ids.max())}]")
            B, T = input_ids.shape
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(f"inputs_embeds must be [batch, seq_len, {self.config.hidden_size}], got "
                                 f"{tuple(inputs_embeds.shape)}")
            B, T = inputs_embeds.shape[:2]
        if T == 0:
            raise ValueError("the input has 0 tokens (an empty prompt?): pass at least one token, e.g. the BOS token")
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < T:
                raise ValueError(
                    f"attention_mask must be [batch={B}, length>={T}] (the new tokens, or past+new tokens); got "
                    f"{tuple(attention_mask.shape)}")
            if not _reading_back_breaks(attention_mask) and not bool((attention_mask[:, -T:] != 0).any()):
                raise ValueError("the attention_mask marks every input position as padding: there is no token to read "
                                 "(generate() builds this mask from pad_token_id when none is passed)")
        return B, T

    def _resolve_cache(self, past_key_values, use_cache, batch_size):
        if isinstance(past_key_values, DynamicCache) and past_key_values.get_seq_length() == 0:
            past_key_values = None
        if past_key_values is not None and not isinstance(past_key_values, HopeCache):
            raise TypeError(f"past_key_values must be a HopeCache, got {type(past_key_values).__name__}")
        if past_key_values is None:
            return HopeCache(self.config) if use_cache else None
        if past_key_values.config_signature is not None and past_key_values.config_signature != signature(self.config):
            raise ValueError("this HopeCache was built for a different Hope config; start a new HopeCache(config)")
        if len(past_key_values.layers) != self.config.num_hidden_layers:
            raise ValueError(f"this HopeCache has {len(past_key_values.layers)} layers, the model "
                             f"{self.config.num_hidden_layers}")
        if not past_key_values.is_empty and past_key_values.model_state["count"].shape[0] != batch_size:
            raise ValueError(f"this HopeCache holds {past_key_values.model_state['count'].shape[0]} sequences but the "
                             f"input has {batch_size}; for beams/num_return_sequences call "
                             "cache.batch_repeat_interleave(n) first")
        return past_key_values

    # --------------------------------------------------------------------------------------------- forward
    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, inputs_embeds=None,
                use_cache=None, output_hidden_states=None, lm_head_weight=None, output_attentions=None, cache=None,
                logits_grad=True, **kwargs):
        """`lm_head_weight`: the LM head the CMS teach signals use (passed by `HopeForCausalLM`); a bare model uses
        its own `lm_head` (untied embeddings) or the input embeddings (tied). `hidden_states` (with
        `output_hidden_states` or `config.output_hidden_states`): the embeddings, the outputs of layers 1..L-1 and
        the normed last layer (= `last_hidden_state`), all on the path to the outputs (a layer-major replay, see
        below; it costs one more forward pass without a graph). `output_attentions` is accepted; `attentions` is
        always None (Hope has no attention). `cache` is transformers >= 5.24's name for `past_key_values`.
        `logits_grad=False`: the returned logits are computed off the graph (for the training loss of the causal LM,
        which also reads `logits_mix`)."""
        past_key_values = cache if past_key_values is None else past_key_values
        c = self.config
        output_hidden_states = output_hidden_states if output_hidden_states is not None else c.output_hidden_states
        if output_attentions if output_attentions is not None else c.output_attentions:
            logger.warning_once("Hope has no attention layers: output_attentions is ignored and attentions is None")
        B, T = self._check_inputs(input_ids, inputs_embeds, attention_mask)
        use_cache = use_cache if use_cache is not None else (c.use_cache and not self.training)
        cache = self._resolve_cache(past_key_values, use_cache or past_key_values is not None, B)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        device, dtype = inputs_embeds.device, inputs_embeds.dtype
        own_head = getattr(self, "lm_head", None)
        W_out = lm_head_weight if lm_head_weight is not None else (
            own_head.weight if own_head is not None else self.embed_tokens.weight)
        has_cms = len(c.cms_chunk_sizes) > 0
        write = self.in_context_updates
        # CMS teach signal targets W_out[y_{t+1}]. Tied embeddings: the next input embedding is that row (for soft
        # prompts, the soft vector). Untied with inputs_embeds: a position whose embedding is exactly a row of the
        # input table is that token; any other (soft prompt, another modality) has no known id and gives its
        # predecessor no teach signal (as padding does), but counts for the cadence.
        known = None
        if has_cms:
            if input_ids is not None:
                target_rows = F.embedding(input_ids, W_out)
            elif c.tie_word_embeddings:
                target_rows = inputs_embeds
            else:
                with torch.no_grad():
                    E, e = self.embed_tokens.weight, inputs_embeds.detach().to(self.embed_tokens.weight.dtype)
                    guess = (E.pow(2).sum(-1) - 2 * e @ E.t()).argmin(-1)            # nearest input embedding
                    known = (F.embedding(guess, E) == e).all(-1)
                target_rows = F.embedding(guess, W_out)
        mask = (attention_mask[:, -T:] != 0) if attention_mask is not None else torch.ones(
            B, T, dtype=torch.bool, device=device)

        # fast state: from the cache, or fresh from the meta-learned initial states
        fresh = cache is None or cache.is_empty
        if not fresh:
            mstate = dict(cache.model_state)
            lstates = [cache.get_state(i) for i in range(c.num_hidden_layers)]
        else:
            mstate = {"count": torch.zeros(B, dtype=torch.long, device=device),
                      "h_pend": torch.zeros(B, c.hidden_size, device=device, dtype=dtype),
                      "pend_valid": torch.zeros(B, dtype=torch.bool, device=device)}
            lstates = [layer.init_state(B, device, dtype) for layer in self.layers]
        lstates = [{**s, "cms": [dict(lv) for lv in s["cms"]]} for s in lstates]
        # static: every sample starts at token 0 with T real tokens, so the frame and the cadence are known without
        # reading tensor values (what torch.export needs); otherwise they are read from the counts and the mask. An
        # all-ones mask (data collators pass one for packed batches) is read once, where reading back breaks nothing.
        static = fresh and (attention_mask is None or not _reading_back_breaks(mask) and bool(mask.all()))
        if torch.compiler.is_exporting() and not static:
            raise ValueError("torch.export of HopeModel.forward needs a fresh state and attention_mask=None (no "
                             "past_key_values); run continuations and padded batches eagerly")

        # per-sample frame: real token j of sample b goes to column s_b + j, s_b = phase_b - min phase
        align = c.span_size or c.memory_chunk_size
        count = mstate["count"]
        n_real = mask.sum(1)
        if static:
            o, s, F_len = 0, torch.zeros_like(count), T
        else:
            phase = count % align
            o = int(phase[n_real > 0].min())            # some row has a real token (`_check_inputs`)
            s = (phase - o).clamp(min=0)
            F_len = int((s + n_real).max())
        idx = torch.where(mask, s[:, None] + mask.cumsum(1) - 1, torch.full_like(mask, F_len, dtype=torch.long))
        to_frame = lambda t: torch.zeros(B, F_len + 1, *t.shape[2:], device=device, dtype=t.dtype).scatter(  # noqa
            1, idx.view(B, T, *([1] * (t.dim() - 2))).expand_as(t), t)[:, :F_len]
        frame = to_frame(inputs_embeds)
        fmask = to_frame(mask)
        tmask = fmask if known is None else to_frame(mask & known)    # positions whose token id is known
        tgt = to_frame(target_rows) if has_cms else None

        reference = self.memory_impl == "reference"
        lm = (lambda m: None) if static else (lambda m: m)       # static: every frame position is real (no masking)
        active = [True] * len(c.cms_chunk_sizes)
        if cache is None:        # nothing outlives this call: a level that cannot commit in it needs no gradient sums
            if static:
                active = [C <= T - 1 for C in c.cms_chunk_sizes]
            else:
                first_boundary = lambda C: (count.clamp(min=1) + C - 1) // C * C                     # noqa: E731
                active = [bool((first_boundary(C) <= count + n_real - 1).any()) for C in c.cms_chunk_sizes]
        # the LM head inside the loop: for the teach signals, and for the returned logits when a causal LM asks
        # (with output_hidden_states the causal LM reads them from last_hidden_state instead)
        want_logits = has_cms and lm_head_weight is not None and not output_hidden_states
        cuts = [0] + ([f for f in range(1, F_len) if (o + f) % c.span_size == 0] if has_cms else []) + [F_len]
        spans = list(zip(cuts[:-1], cuts[1:]))
        gather_back = (lambda t: torch.cat(t, 1)) if static else lambda t: torch.cat(t, 1).gather(  # noqa: E731
            1, idx.clamp(max=max(F_len - 1, 0))[..., None].expand(B, T, t[0].shape[-1])) * mask[..., None]
        # With hidden states asked for, the span loop runs without a graph and only records the (detached) teach
        # signals; a layer-major replay with those signals then builds the same graph with each layer reading the
        # previous layer's returned whole-sequence hidden states, so every returned hidden state is on the graph.
        replay = bool(output_hidden_states)
        layer_states = [{**st, "cms": [dict(lv) for lv in st["cms"]]} for st in lstates] if replay else None
        teach = [] if replay else None
        on_grid = lambda f0: has_cms and write and (o + f0) % c.span_size == 0                    # noqa: E731
        commit_at = lambda f0: (count + (f0 - s), fmask[:, f0]) if on_grid(f0) else None          # noqa: E731
        # plain: static with every next token known (no soft inputs), so no teach signal or pending position is
        # masked: the pending positions are each span's last column, and no per-span mask arithmetic is needed
        plain = static and known is None

        def run_spans(group, spec, *leaves):
            """The span loop over `group`, pure in its flattened state `leaves`/`spec` = (mstate, lstates, due), so
            that a group of spans can be checkpointed whole. Returns (hidden per span, logits per span, the teach
            signals' logit mixes in order, state spec, *state leaves). `due`: (level inputs per layer, u) of the last
            span, learnt in the next one."""
            mstate, lstates, due = tree_unflatten(list(leaves), spec)
            hs, lgs, mixes = [], [], []
            for f0, f1 in group:
                m = fmask[:, f0:f1]
                has = None if plain else m.any(1)
                u_pend = None
                if has_cms and write and f0 == 0 and not static:
                    res = mstate["pend_valid"] & has          # an earlier call's pending position gets its next token
                    if bool(res.any()):                       # (each sample's first real column is in the first span)
                        first = m.int().argmax(1)
                        target = tgt[:, f0:f1].gather(1, first[:, None, None].expand(B, 1, c.hidden_size))[:, 0]
                        taught = res & tmask[:, f0:f1].gather(1, first[:, None])[:, 0]
                        mstate["pend_valid"] = mstate["pend_valid"] & ~res
                        u_pend = teach_signal(mstate["h_pend"], self.norm.weight, c.rms_norm_eps, W_out, target)[0]
                        u_pend = u_pend * taught[:, None]
                h = frame[:, f0:f1].contiguous()  # (laid out like the later layers' inputs: one compiled variant)
                level_inputs, commit = [], commit_at(f0)              # (every layer reads the same counts)
                for i, layer in enumerate(self.layers):
                    teach_in = self._teach(None if due is None else (due[0][i], due[1]), lstates[i], u_pend)
                    h, lstates[i], xins = self._run_layer(layer, h, lm(m), lstates[i], o + f0, reference, write,
                                                          teach_in, commit, active, f0 if static else None)
                    level_inputs.append(xins)
                hs.append(h)
                if has_cms and (write or want_logits):
                    with torch.set_grad_enabled(torch.is_grad_enabled() and want_logits and logits_grad):
                        logits = self.norm(h) @ W_out.t()
                    if want_logits:
                        lgs.append(logits)
                if has_cms and write:
                    # every column whose next token is in this call is taught now; the call's last column stays
                    # pending (taught when the next call brings its token)
                    n = f1 - f0 - (f1 == F_len)
                    u, mix = teach_signal(h[:, :n], self.norm.weight, c.rms_norm_eps, W_out, tgt[:, f0 + 1:f0 + 1 + n],
                                          logits[:, :n])
                    u = u if plain else u * (m[:, :n] & tmask[:, f0 + 1:f0 + 1 + n])[..., None]
                    mixes.append(mix)
                    u = F.pad(u, (0, 0, 0, f1 - f0 - n))
                    due = (level_inputs, u)
                    if replay:                               # (replay runs without a graph: never checkpointed)
                        teach.append((u_pend, u))
                    # each sample's last real column so far: the call's last one stays pending
                    if plain:                                # (pend_valid is not read: set at the end)
                        mstate["h_pend"] = h[:, -1]
                    else:
                        mstate["h_pend"] = torch.where(has[:, None], self._pick_last(m, h), mstate["h_pend"])
                        mstate["pend_valid"] = mstate["pend_valid"] | has
                    self._set_pending(lstates, level_inputs, None if plain else m)
            leaves, spec = tree_flatten((mstate, lstates, due))
            return hs, lgs, mixes, spec, *leaves

        with torch.set_grad_enabled(torch.is_grad_enabled() and not replay):
            todo = spans if has_cms and write or not replay else []
            # with activation checkpointing, groups of ~sqrt(#spans) spans are checkpointed around the per-block span
            # checkpoints (nested): the forward keeps each group's input state, not every span's
            # (`checkpoint_span_groups = False`: per-block span checkpoints only; ~1/4 faster, ~4x the saved memory)
            grouped = (self.checkpoint_span_groups and self.training and torch.is_grad_enabled() and len(todo) >= 4
                       and self.blocks_checkpointed)
            size = math.isqrt(len(todo) - 1) + 1 if grouped else max(len(todo), 1)
            spans_h, spans_logits, mixes = [], [], []
            leaves, spec = tree_flatten((mstate, lstates, None))
            for g in range(0, len(todo), size):
                run = partial(run_spans, todo[g:g + size])
                hs, lgs, mx, spec, *leaves = (checkpoint(run, spec, *leaves, use_reentrant=False) if grouped
                                              else run(spec, *leaves))
                spans_h += hs
                spans_logits += lgs
                mixes += mx
            mstate, lstates, due = tree_unflatten(leaves, spec)
            if due is not None and cache is not None and not replay:       # the state outlives the call
                for i, layer in enumerate(self.layers):
                    lstates[i]["cms"] = layer.cms_accumulate(lstates[i]["cms"], due[0][i], due[1], active, reference)
            if plain and has_cms and write and cache is not None:
                # every sample has a pending position; they are views of the last span's tensors: keep only those rows
                mstate["h_pend"], mstate["pend_valid"] = mstate["h_pend"].clone(), torch.ones_like(mstate["pend_valid"])
                for st in lstates:
                    for lv in st["cms"]:
                        lv["x_pend"] = lv["x_pend"].clone()

        all_hidden = None
        if replay:                                        # layer-major: layer l reads to_frame(hidden_states[l])
            all_hidden = [inputs_embeds]
            for i, layer in enumerate(self.layers):
                st, pieces, h_in, due = layer_states[i], [], to_frame(all_hidden[-1]), None
                for k, (f0, f1) in enumerate(spans):
                    m = fmask[:, f0:f1]
                    teach_in = self._teach(due, st, teach[k][0]) if has_cms and write else None
                    h, st, xins = self._run_layer(layer, h_in[:, f0:f1], lm(m), st, o + f0, reference, write,
                                                  teach_in, commit_at(f0), active, f0 if static else None)
                    pieces.append(h)
                    if has_cms and write:
                        due = (xins, teach[k][1])
                        self._set_pending([st], [xins], m)
                if due is not None and cache is not None:
                    st["cms"] = layer.cms_accumulate(st["cms"], *due, active, reference)
                lstates[i] = st
                all_hidden.append(gather_back(pieces))
            hidden = all_hidden[-1]
        else:
            hidden = gather_back(spans_h)
        logits = gather_back(spans_logits) if want_logits else None
        logits_mix = None
        if static and write and want_logits and not logits_grad:       # (want_logits: CMS levels, no replay)
            with torch.no_grad():   # the teach signals' mixes cover every position but the last: its mix is new
                last = torch.softmax(logits[:, -1:].float(), -1) @ W_out.detach().float()
                logits_mix = torch.cat([*mixes, last], 1)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden = (*all_hidden[:-1], hidden)
        mstate["count"] = count + n_real
        if input_ids is not None:
            mstate["last_ids"] = input_ids[:, -1].clone()                  # lets generate() check a continuation
        if cache is not None:
            for i, st in enumerate(lstates):
                cache.set_state(i, st)
            cache.model_state = mstate
            cache.seen_tokens += T
            if cache.config_signature is None:
                cache.config_signature = signature(c)
        return HopeModelOutput(last_hidden_state=hidden, hidden_states=all_hidden, logits=logits,
                               logits_mix=logits_mix, **{CACHE_FIELD: cache})

    def _run_layer(self, layer, h, m, state, offset, reference, write, teach=None, commit=None, active=(),
                   static_count=None):
        """One block on one span with its inputs flattened to tensors (see `HopeBlock.forward`). The block gets only
        the phase of `offset` on the memories' chunk grid (the projection chunk size divides the memory chunk size), the
        one thing it reads from it."""
        held = {}
        if static_count is not None and teach is not None:
            # the gradient sums of levels that do not commit now are added outside the block: passed in, activation
            # checkpointing would keep every span's running sum alive until backward
            due = layer.static_due(static_count) if commit is not None else [False] * len(layer.cms)
            levels = [dict(lv) for lv in state["cms"]]
            held = {i: lv.pop("grad") for i, lv in enumerate(levels) if not due[i] and "grad" in lv}
            state = {**state, "cms": levels}
        leaves, spec = tree_flatten((state, teach, commit))
        phase = offset % self.config.memory_chunk_size
        with _recompile_limit(self.block_recompile_limit):
            h, out_spec, *out_leaves = layer(h, m, *leaves, spec=spec, offset=phase, reference=reference, write=write,
                                             active=tuple(active), static_count=static_count)
        new_state, xins = tree_unflatten(out_leaves, out_spec)
        for i, total in held.items():
            lv = new_state["cms"][i]
            lv["grad"] = tuple(a + b for a, b in zip(total, lv["grad"])) if "grad" in lv else total
        return h, new_state, xins

    @staticmethod
    def _teach(due, layer_state, u_pend):
        """What a layer's CMS levels learn as a span starts (`HopeBlock.forward`'s teach), as (level inputs, u) along
        time, or None: the last span's positions `due`, or at a call's first span (where nothing is due yet) each
        sample's pending position from the call before, (x_pend, u_pend)."""
        if u_pend is None:
            return due
        assert due is None, "a pending position is taught only at a call's first span"
        return [lv["x_pend"][:, None] for lv in layer_state["cms"]], u_pend[:, None]

    @staticmethod
    def _pick_last(m, t):
        """Each row's value at the last real column of the span (m: [B, S])."""
        last = (m.shape[1] - 1) - m.flip(1).int().argmax(1)
        return t.gather(1, last[:, None, None].expand(t.shape[0], 1, t.shape[-1]))[:, 0]

    def _set_pending(self, lstates, level_inputs, m):
        """Keep each CMS level's input at the span's last real column (taught when the next token arrives, if it is not
        in this call); m=None: every position is real (the last column)."""
        has = None if m is None else m.any(1)[:, None]
        for st, xins in zip(lstates, level_inputs):
            for lv, xin in zip(st["cms"], xins):
                lv["x_pend"] = xin[:, -1] if m is None else torch.where(has, self._pick_last(m, xin), lv["x_pend"])


class HopeForCausalLM(HopePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # assisted decoding would roll the cache back to before rejected draft tokens; a memory updated in context
    # cannot be cropped (transformers >= 5.25 checks this list before it dispatches)
    _supported_generation_modes = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE, GenerationMode.BEAM_SEARCH,
                                   GenerationMode.BEAM_SAMPLE)

    def __init__(self, config: HopeConfig):
        super().__init__(config)
        self.model = HopeModel(config, own_head=False)           # the teach signals use self.lm_head
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def set_memory_impl(self, impl: str):
        self.model.set_memory_impl(impl)

    def set_in_context_updates(self, enabled: bool):
        self.model.set_in_context_updates(enabled)

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, past_key_values=None,
                                      attention_mask=None, inputs_embeds=None, is_first_iteration=False, **kwargs):
        past_key_values = kwargs.pop("cache", past_key_values)           # transformers >= 5.24 passes `cache`
        if is_first_iteration and isinstance(past_key_values, HopeCache) and not past_key_values.is_empty:
            seen = past_key_values.get_seq_length()
            hint = ("pass the whole conversation so far (the returned sequences, including the last generated token, "
                    "followed by the new tokens) together with the cache")
            if next_sequence_length is not None and next_sequence_length <= 0:
                raise ValueError(
                    f"the HopeCache has already consumed {seen} tokens but input_ids has {input_ids.shape[1]}: nothing "
                    f"new to read. If you ran forward() over the whole prompt yourself, consume all but its last "
                    f"token; "
                    f"otherwise {hint}.")
            cached_batch = past_key_values.model_state["count"].shape[0]
            batch = (inputs_embeds if inputs_embeds is not None else input_ids).shape[0]
            if batch != cached_batch:
                raise ValueError(
                    f"the HopeCache holds {cached_batch} sequences but generate runs {batch} (beams or "
                    f"num_return_sequences expand the inputs, not a cache you pass): call "
                    f"cache.batch_repeat_interleave({batch // max(cached_batch, 1)}) first")
            last = past_key_values.model_state.get("last_ids")
            if (inputs_embeds is None and last is not None and input_ids.shape[1] >= seen
                    and not torch.equal(input_ids[:, seen - 1], last.to(input_ids.device))):
                raise ValueError(f"input_ids do not continue the conversation held in the HopeCache: {hint}.")
        return super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, attention_mask=attention_mask,
            inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **{CACHE_FIELD: past_key_values},
            **kwargs)

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, inputs_embeds=None, labels=None,
                use_cache=None, output_hidden_states=None, logits_to_keep=0, output_attentions=None, cache=None,
                **kwargs):
        """With `labels` in training mode the loss goes through `LinearCrossEntropy` (from the logits and mixes the
        teach signals computed; with activation checkpointing it keeps no [tokens, vocab] tensor for backward) and the
        returned logits are detached; otherwise, or when `loss_function` was replaced (a `config.loss_type` or an
        assigned function), transformers' `loss_function` on the logits."""
        past_key_values = cache if past_key_values is None else past_key_values   # transformers >= 5.24: `cache`
        lean = (labels is not None and self.training and torch.is_grad_enabled()
                and self.loss_function is ForCausalLMLoss)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
                         lm_head_weight=self.lm_head.weight, output_attentions=output_attentions, return_dict=True,
                         logits_grad=not lean)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        loss = None
        if lean:
            logits = out.logits
            if logits is None:
                with torch.no_grad():
                    logits = self.lm_head(out.last_hidden_state)
            loss = causal_lm_loss(out.last_hidden_state, self.lm_head.weight, logits, labels, mix=out.logits_mix,
                                  keep=not self.model.blocks_checkpointed, **kwargs)
            logits = logits[:, keep]
        else:
            logits = out.logits[:, keep] if out.logits is not None else self.lm_head(out.last_hidden_state[:, keep])
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                      **{CACHE_FIELD: out.get(CACHE_FIELD)})


__all__ = ["HopeModel", "HopeForCausalLM", "HopePreTrainedModel", "HopeCache"]
