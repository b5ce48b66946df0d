"""`HopeCache`: the per-sequence fast state of every Hope layer, carried between forward/generate calls.

Hub-facing file: imports only torch/transformers and siblings with single-dot relative imports.
"""

import json

import torch
from safetensors.torch import load_file, save_file
from transformers import Cache


def tree_map(fn, tree):
    """Apply `fn` to every tensor of a nested dict/list/tuple (None stays None)."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return fn(tree) if isinstance(tree, torch.Tensor) else tree


class HopeLayerState:
    """Fast state of one layer: the Titans memories (read and running weights, momentum, conv tail) and each CMS
    level's fast weights, pending gradient sum, pending input and commit counter. Batch dimension first."""

    is_compileable = False
    is_croppable = False
    supports_early_init = False
    is_sliding = False

    def __init__(self):
        self.state = None
        self.is_initialized = False

    def _map(self, fn):
        self.state = tree_map(fn, self.state)

    def reorder_cache(self, beam_idx):
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats):
        self._map(lambda t: t.repeat_interleave(repeats, 0))

    def batch_select_indices(self, indices):
        self._map(lambda t: t[indices, ...])

    def reset(self):
        self.state, self.is_initialized = None, False

    def crop(self, max_length):
        if max_length != 0:
            raise ValueError("HopeCache holds recurrent memory state and cannot be cropped; re-run from a saved copy")

    def offload(self):
        pass

    def prefetch(self):
        pass

    def get_max_length(self):
        return -1

    def get_seq_length(self):
        return 0


class HopeCache(Cache):
    """Fast state of a Hope model for a batch of sequences (design.md §4).

    `get_seq_length()` is the number of input positions consumed (what `generate` slices with); the model-level
    part (`model_state`) holds the per-sample count of real tokens, the pending teach-signal input (the final
    hidden state of the last consumed token, waiting for the next token) and its validity mask."""

    is_compileable = False

    def __init__(self, config=None, num_layers=None):
        n = num_layers if num_layers is not None else config.num_hidden_layers
        super().__init__(layers=[HopeLayerState() for _ in range(n)])
        self.seen_tokens = 0
        self.model_state = None
        self.config_signature = None if config is None else signature(config)
        self.weights_fingerprint = None  # set by whoever saves a session (see `weights_fingerprint`)

    # -- the transformers Cache surface
    def get_seq_length(self, layer_idx=0):
        return self.seen_tokens

    def get_max_cache_shape(self, layer_idx=0):
        return -1

    def get_mask_sizes(self, *args, **kwargs):
        return self.seen_tokens, 0

    @property
    def is_sliding(self):
        return [False] * len(self.layers)

    def _model_map(self, fn):
        self.model_state = tree_map(fn, self.model_state)

    def reorder_cache(self, beam_idx):
        for layer in self.layers:
            layer.reorder_cache(beam_idx)
        self._model_map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats):
        for layer in self.layers:
            layer.batch_repeat_interleave(repeats)
        self._model_map(lambda t: t.repeat_interleave(repeats, 0))

    def batch_select_indices(self, indices):
        for layer in self.layers:
            layer.batch_select_indices(indices)
        self._model_map(lambda t: t[indices, ...])

    def crop(self, max_length):
        if max_length < 0:
            max_length = self.seen_tokens + max_length
        if max_length != self.seen_tokens:
            raise ValueError(
                f"HopeCache cannot be cropped to {max_length} tokens (it has consumed {self.seen_tokens}): the memory "
                "state is recurrent. Keep a copy.deepcopy of the cache from before the tokens you want to drop.")

    def reset(self):
        for layer in self.layers:
            layer.reset()
        self.seen_tokens = 0
        self.model_state = None

    def detach_(self):
        """Cut the autograd graph of the carried state (truncated BPTT between training segments)."""
        for layer in self.layers:
            layer._map(lambda t: t.detach())
        self._model_map(lambda t: t.detach())
        return self

    # -- Hope-specific
    @property
    def is_empty(self):
        return self.model_state is None

    def get_state(self, layer_idx):
        return self.layers[layer_idx].state

    def set_state(self, layer_idx, state):
        self.layers[layer_idx].state = state
        self.layers[layer_idx].is_initialized = True

    def save(self, path):
        """Save this memory session (all fast state) to a safetensors file."""
        save_session(self, path)

    @classmethod
    def load(cls, path, config=None, device=None, fingerprint=None):
        """Load a memory session saved with `save`; with `config`, refuse a session from another config, and with
        `fingerprint` (`weights_fingerprint(model)`), one saved with other weights."""
        return load_session(cls, path, config, device, fingerprint)

    def cms_update_counts(self):
        """Commits made so far by every CMS level: a LongTensor [num_layers, num_levels, batch]."""
        if self.model_state is None:
            raise ValueError("the cache is empty: run a forward pass with it first")
        count = self.model_state["count"]
        empty = torch.zeros(0, count.shape[0], dtype=torch.long, device=count.device)
        return torch.stack([torch.stack([lvl["commits"] for lvl in layer.state["cms"]]) if layer.state["cms"]
                            else empty for layer in self.layers])


def _flatten(tree, prefix, out):
    if isinstance(tree, dict):
        for k, v in tree.items():
            _flatten(v, f"{prefix}{k}.", out)
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            _flatten(v, f"{prefix}{i}.", out)
    elif isinstance(tree, torch.Tensor):
        out[prefix[:-1]] = tree.detach().contiguous().clone()
    return out


def _unflatten(flat):
    root = {}
    for key, value in flat.items():
        node, parts = root, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def fix(node, name=""):
        if not isinstance(node, dict):
            return node
        node = {k: fix(v, k) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            items = [node[str(i)] for i in range(len(node))]
            return tuple(items) if name in ("theta", "grad") else items
        return node
    return fix(root)


def save_session(cache, path):
    """Write the cache (a conversation's memory) as safetensors; the config signature goes into the metadata."""
    if cache.is_empty:
        raise ValueError("the cache is empty: there is no memory session to save")
    flat = _flatten({"model": cache.model_state, "layers": [layer.state for layer in cache.layers]}, "", {})
    meta = {"format": "pt", "hope_session": "1", "seen_tokens": str(cache.seen_tokens),
            "signature": json.dumps(cache.config_signature)}
    if getattr(cache, "weights_fingerprint", None):
        meta["weights_fingerprint"] = cache.weights_fingerprint
    save_file(flat, str(path), metadata=meta)


def load_session(cls, path, config=None, device=None, fingerprint=None):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        flat = load_file(str(path), device=str(device or "cpu"))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"cannot read the memory session {path}: {' '.join(str(e).split())} (the file is missing, "
                         "truncated or not a safetensors file)") from e
    if meta.get("hope_session") != "1":
        raise ValueError(f"{path} is not a Hope memory session (saved with HopeCache.save)")
    sig = json.loads(meta["signature"])
    sig = None if sig is None else tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sig)
    ours = None if config is None else signature(config)
    if ours is not None and sig != ours:
        ours, theirs, unset = dict(ours), dict(sig or ()), object()
        fields = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k, unset) != theirs.get(k, unset))
        raise ValueError(f"the memory session in {path} was saved from a model with another config (differing: "
                         f"{', '.join(fields)}; a session saved before a field existed lacks it); load it with the "
                         "same model configuration it was created with")
    saved = meta.get("weights_fingerprint")
    if fingerprint is not None and saved is not None and saved != fingerprint:
        raise ValueError(f"the memory session in {path} was made with other weights (fingerprint {saved}, this model "
                         f"{fingerprint}): a session continues only with the model that wrote it; start a new session")
    tree = _unflatten(flat)
    cache = cls(num_layers=len(tree["layers"]))
    cache.config_signature = sig
    cache.weights_fingerprint = saved
    cache.model_state = tree["model"]
    for i, st in enumerate(tree["layers"]):
        cache.set_state(i, st)
    cache.seen_tokens = int(meta["seen_tokens"])
    return cache


def weights_fingerprint(model, samples=256):
    """A short hash of a model's weights: every state-dict tensor's name, shape and `samples` evenly spaced values
    (rounded to bfloat16, so a float32 and a bfloat16 copy of the same weights agree, and the device does not
    matter). Cheap even for large models; a memory session records it and refuses other weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        h.update(f"{name}{tuple(t.shape)}".encode())
        if flat.numel() and flat.is_floating_point():
            idx = torch.linspace(0, flat.numel() - 1, min(samples, flat.numel()), device=flat.device).long()
            h.update(flat[idx].to(torch.bfloat16).float().cpu().numpy().tobytes())
        elif flat.numel():
            h.update(flat[: samples].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def signature(config):
    """The config fields that fix the shape and meaning of the fast state (a foreign cache is refused)."""
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "memory_hidden_size", "memory_chunk_size",
            "projection_chunk_size", "cms_chunk_sizes", "cms_intermediate_size", "conv_size", "self_modifying",
            "use_momentum", "adaptive_query", "memory_writes_first_layer")
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in ((k, getattr(config, k)) for k in keys))


__all__ = ["HopeCache", "HopeLayerState", "tree_map", "weights_fingerprint"]
