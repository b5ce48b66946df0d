"""Test-wide setup: an isolated, offline Hugging Face environment and a tokenizer trained on the spot.

The environment variables are set at import time, before any test module imports transformers, so that
huggingface_hub / transformers / datasets / accelerate read them when they load.
"""

import atexit
import os
import shutil
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="hope-hf-tests-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402  (after the environment above, which these imports read)
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: one thread is as fast and immune to oversubscription

# Modules whose docstrings make the tokenizer's training text (a few tens of KB of real prose).
TOKENIZER_DOC_MODULES = ("json", "collections", "itertools", "functools", "pathlib")


@pytest.fixture(scope="session")
def tokenizer_texts():
    """Real English/technical text from the standard library's docstrings (deterministic)."""
    import importlib

    from hope_hf.corpus import module_docs

    return [doc for name in TOKENIZER_DOC_MODULES for doc in module_docs(importlib.import_module(name))]


@pytest.fixture(scope="session")
def tokenizer(tokenizer_texts):
    """Byte-level BPE with 300 tokens; `<pad>`, `<s>`, `</s>` are ids 0, 1, 2."""
    from hope_hf.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(tokenizer_texts, vocab_size=300)
