"""`hope-hf train --optimizer` and `--cms-outer-periods`: the deep optimizers of hope_hf.optim in the training loop."""

import json
import math

import pytest

from hope_hf.optim import M3, DMGD, MultiFrequency
from test_train import run_train


def final_log(out):
    recs = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return [r for r in recs if "loss" in r], [r for r in recs if "val_loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("name, periods, cls", [("m3", None, M3), ("dmgd", None, DMGD),
                                                ("adamw", [1024, 4096], MultiFrequency)])
def test_train_with_each_optimizer(tmp_path, monkeypatch, name, periods, cls):
    built = []
    import hope_hf.train as train_mod
    real = train_mod.create_optimizer
    monkeypatch.setattr(train_mod, "create_optimizer", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    out = tmp_path / name
    args = ["--max-steps", "4", "--eval-every", "4", "--save-every", "0", "--optimizer", name, "--lr", "1e-3",
            "--output-dir", out]
    if periods:
        args += ["--cms-outer-periods", *periods]
    run_train(*args)
    assert len(built) == 1 and isinstance(built[0], cls)
    train_recs, val_recs = final_log(out)
    assert len(train_recs) == 4 and all(math.isfinite(r["loss"]) for r in train_recs)
    assert math.isfinite(val_recs[-1]["val_loss"])
    card = (out / "final" / "README.md").read_text()
    assert name in card
    assert (out / "final" / "model.safetensors").exists()
