"""Configuration of the Hope model (Nested Learning, arXiv 2512.24695 §8).

Hub-facing file: imports only torch/transformers and siblings with single-dot relative imports.
"""

import math

from transformers import PreTrainedConfig

TEACH_SIGNALS = ("final",)
MEMORY_OBJECTIVES = ("l2", "dot")

# Preset shapes. tiny/small are ours, their chunk sizes chosen by measurement (projection/memory chunks 64/64: on
# benchmarks.lm_quality's tiny setup the same validation perplexity as 16/64 within 0.1%, and the step 1.6x faster;
# the output memory reads in-chunk, so its chunk only sets where gradients are linearised; that linearisation still
# costs a little: memory/projection chunks 16 with the same CMS levels gave 1.0% / 2.5% lower docs / code perplexity
# for 13-28% more step time, .exp/chunkquality.json). The paper does not print
# its model dimensions, so the 340M/760M/1.3B shapes borrow width/depth from the Titans and Gated DeltaNet recipes
# and size the CMS so the parameter count lands near the name (see `HopeConfig.from_preset`).
PRESETS = {
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, memory_hidden_size=32,
        projection_chunk_size=64, memory_chunk_size=64, cms_chunk_sizes=[64, 256],
        cms_intermediate_size=128,
    ),
    "small": dict(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=6, memory_hidden_size=64,
        projection_chunk_size=64, memory_chunk_size=64, cms_chunk_sizes=[64, 512, 2048],
        cms_intermediate_size=768,
    ),
    "340m": dict(
        hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, memory_hidden_size=128,
        projection_chunk_size=64, memory_chunk_size=64, cms_chunk_sizes=[64, 512, 2048],
        cms_intermediate_size=1536,
    ),
    "760m": dict(
        hidden_size=1536, num_hidden_layers=18, num_attention_heads=24, memory_hidden_size=128,
        projection_chunk_size=64, memory_chunk_size=64, cms_chunk_sizes=[64, 512, 2048],
        cms_intermediate_size=2048,
    ),
    "1.3b": dict(
        hidden_size=2048, num_hidden_layers=20, num_attention_heads=32, memory_hidden_size=128,
        projection_chunk_size=64, memory_chunk_size=64, cms_chunk_sizes=[64, 512, 2048],
        cms_intermediate_size=2560,
    ),
}


class HopeConfig(PreTrainedConfig):
    r"""Configuration for [`HopeModel`] / [`HopeForCausalLM`].

    Shapes: `hidden_size` = `num_attention_heads` x head size; each head has six self-modifying memories
    (k, v, q, eta, alpha, memory; Eq. 86-89), residual 2-layer MLPs of width `memory_hidden_size`.
    Chunks: the k/v/q/eta/alpha memories step every `projection_chunk_size` tokens, the output memory every
    `memory_chunk_size` tokens (Eq. 90-91), CMS level l every `cms_chunk_sizes[l]` tokens (NeurIPS Eq. 31).
    Every chunk size must divide the larger ones, so all boundaries line up per sample.
    The self-modifying k/v/q/eta/alpha memories learn at s_h eta_t (a learned per-head scale starting at
    `projection_lr_scale_init`), the output memory at eta_t.
    Each CMS level adds g_l MLP_l(norm x) to the residual stream; the scales g_l start at `cms_out_scale_init`.
    `memory_grad_clip` (default None: off) clips every memory layer's per-token inner gradient to that Frobenius
    norm: 1.0 keeps a recall-trained model stable far past its training length (unclipped, its output memory's
    heavy-tailed residuals M(k) - M(v) made it chaotic past 8x), but it also kept 2 of 3 recall seeds from learning
    the task (README, "Clipped inner gradients").
    `memory_writes_first_layer` (default False): whether the memories' first layers W2 are written in context too.
    Fixed, each memory's W2 stays its meta-learned M_0 (a slow feature map) and only W1 is written: a delta rule on
    unit features n, which kept recall-trained models stable past their training length where W2's writes made
    them chaotic (README, "Fixed first layers"); the fast state then holds no W2.

    Ablations: `self_modifying=False` (static k/v/q/eta/alpha projections: plain Titans LMM), `use_dgd=False`
    (plain gradient step with retention, Titans Eq. 13-14), `use_momentum=False`, `adaptive_query=False`
    (fixed linear q), `cms_chunk_sizes=[]` (no CMS), `memory_objective="dot"` (Eq. 92, delta rule).
    """

    model_type = "hope"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 32000
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    memory_hidden_size: int = 64
    memory_chunk_size: int = 64
    projection_chunk_size: int = 64
    cms_chunk_sizes: list[int] | None = None
    cms_intermediate_size: int = 512
    conv_size: int = 4
    self_modifying: bool = True
    use_dgd: bool = True
    use_momentum: bool = True
    adaptive_query: bool = True
    memory_objective: str = "l2"
    memory_grad_clip: float | None = None
    memory_writes_first_layer: bool = False
    memory_lr_max: float = 0.1
    memory_lr_init: float = 0.012
    memory_retention_init: list[float] | None = None
    projection_lr_scale_init: float = 0.01
    cms_lr_init: float = 1e-3
    cms_out_scale_init: float = 0.0
    cms_teach_signal: str = "final"
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self, **kwargs):
        if self.cms_chunk_sizes is None:
            self.cms_chunk_sizes = [64, 512, 2048]
        if isinstance(self.cms_chunk_sizes, tuple):
            self.cms_chunk_sizes = list(self.cms_chunk_sizes)
        if self.memory_retention_init is None:
            self.memory_retention_init = [0.982, 0.982]
        if isinstance(self.memory_retention_init, tuple):
            self.memory_retention_init = list(self.memory_retention_init)
        super().__post_init__(**kwargs)
        self.validate_hope()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "HopeConfig":
        """Build a preset (`tiny`, `small`, `340m`, `760m`, `1.3b`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def span_size(self) -> int | None:
        """Granularity of the forward loop: the smallest CMS chunk (None without CMS: one span per call)."""
        return min(self.cms_chunk_sizes) if self.cms_chunk_sizes else None

    def validate_hope(self):
        """Raise `ValueError` naming the first invalid field."""
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "memory_hidden_size",
                    "memory_chunk_size", "projection_chunk_size", "cms_intermediate_size", "conv_size")
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("self_modifying", "use_dgd", "use_momentum", "adaptive_query", "memory_writes_first_layer",
                     "tie_word_embeddings", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})")
        if not isinstance(self.cms_chunk_sizes, list):
            raise ValueError(f"cms_chunk_sizes must be a list of ints, got {self.cms_chunk_sizes!r}")
        for i, c in enumerate(self.cms_chunk_sizes):
            _check_int(f"cms_chunk_sizes[{i}]", c, minimum=1)
        if self.memory_chunk_size % self.projection_chunk_size:
            raise ValueError(
                f"projection_chunk_size ({self.projection_chunk_size}) must divide memory_chunk_size "
                f"({self.memory_chunk_size})")
        chain = sorted(set(self.cms_chunk_sizes))
        if chain and chain[0] % self.memory_chunk_size:
            raise ValueError(
                f"memory_chunk_size ({self.memory_chunk_size}) must divide every cms_chunk_sizes entry "
                f"(got {self.cms_chunk_sizes})")
        for small, large in zip(chain, chain[1:]):
            if large % small:
                raise ValueError(f"cms_chunk_sizes must each divide the larger ones; {small} does not divide {large}")
        if self.cms_teach_signal not in TEACH_SIGNALS:
            raise ValueError(f"cms_teach_signal must be one of {TEACH_SIGNALS}, got {self.cms_teach_signal!r}")
        if self.memory_objective not in MEMORY_OBJECTIVES:
            raise ValueError(f"memory_objective must be one of {MEMORY_OBJECTIVES}, got {self.memory_objective!r}")
        for name, lo, hi in (("memory_lr_max", 0.0, 1.0), ("cms_lr_init", 0.0, None), ("rms_norm_eps", 0.0, None),
                             ("initializer_range", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= lo or (hi is not None and v > hi):
                bound = f"in ({lo}, {hi}]" if hi is not None else f"> {lo}"
                raise ValueError(f"{name} must be a number {bound}, got {v!r}")
        if not 0 < self.memory_lr_init < self.memory_lr_max:
            raise ValueError(f"memory_lr_init must be in (0, memory_lr_max={self.memory_lr_max}), "
                             f"got {self.memory_lr_init!r}")
        v = self.memory_grad_clip
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise ValueError(f"memory_grad_clip must be a number > 0 or None, got {v!r}")
        v = self.projection_lr_scale_init
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"projection_lr_scale_init must be a number in (0, 1), got {v!r}")
        v = self.cms_out_scale_init
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"cms_out_scale_init must be a finite number, got {v!r}")
        r = self.memory_retention_init
        if (not isinstance(r, list) or len(r) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                         for v in r) or not 0 < r[0] <= r[1] < 1):
            raise ValueError(f"memory_retention_init must be [low, high] with 0 < low <= high < 1, got {r!r}")
        for name in ("pad_token_id", "bos_token_id"):
            v = getattr(self, name)
            if v is not None:
                _check_int(name, v, minimum=0, maximum=self.vocab_size - 1)
        eos = self.eos_token_id
        for i, v in enumerate(eos if isinstance(eos, list) else [] if eos is None else [eos]):
            _check_int("eos_token_id", v, minimum=0, maximum=self.vocab_size - 1)


def _check_int(name, value, minimum=None, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


__all__ = ["HopeConfig", "PRESETS"]
