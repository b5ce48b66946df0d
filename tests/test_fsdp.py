"""hope-hf train --fsdp: sharded training with Accelerate's FSDP2 plugin (2 CPU processes, gloo).

The reference is one process on the same global batch: the corpus is cut so that the training split holds exactly
one global batch (4 blocks), so every step of the 1-process run (batch 4) and of the 2-process run (each process its
own 2 blocks, as 2 accumulated micro-batches of 1) sees the same 4 blocks. Both read each block in 2 TBPTT segments;
the sharded run also recomputes activations (--activation-checkpointing).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from multiproc import launch
from transformers import AutoModelForCausalLM

from hope_hf import cli, train

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "accelerate_fsdp2.yaml"
GLOBAL_BATCH = 4
STEPS = 4


def losses(out: Path, key: str = "loss") -> dict[int, float]:
    lines = (json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines())
    return {r["step"]: r[key] for r in lines if key in r}


@pytest.fixture(scope="module")
def data(tmp_path_factory, tokenizer, tokenizer_texts):
    """(common options, directory): a saved tokenizer, and a corpus whose training split is one global batch."""
    from hope_hf.data import load_text_dataset, prepare_blocks

    root = tmp_path_factory.mktemp("fsdp-data")
    tokenizer.save_pretrained(root / "tok")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(tokenizer_texts[:3]))
    blocks = prepare_blocks(load_text_dataset(str(corpus)), tokenizer, 128, val_blocks=1)
    n_val = blocks.num_train + 1 - GLOBAL_BATCH
    assert n_val >= 2, "the corpus is too small for the test"
    opts = ["--dataset", str(corpus), "--tokenizer", str(root / "tok"), "--seq-len", "128", "--val-blocks",
            str(n_val), "--max-steps", str(STEPS), "--save-every", "2", "--eval-every", str(STEPS),
            "--keep-checkpoints", "0", "--sample-tokens", "0", "--seed", "3", "--warmup-steps", "0",
            "--tbptt-segments", "2"]
    return opts, root


def launch_fsdp(tmp: Path, *argv) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file examples/accelerate_fsdp2.yaml` with 2 CPU processes (`multiproc.launch`:
    a worker killed by a signal reruns once, from an empty output directory)."""
    env = {**os.environ, "HF_HOME": str(tmp / "hf_home"), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = Path(argv[list(argv).index("--output-dir") + 1])
    return launch(lambda port: [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
                                "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port),
                                "-m", "hope_hf.train", "--fsdp", *map(str, argv)],
                  env=env, timeout=300, cwd=REPO, out=out)


def train_here(*argv):
    """`hope_hf.train.main` in this process (one process, no sharding), with Accelerate's singletons reset after."""
    try:
        return train.main(list(map(str, argv)))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys: the full state was gathered
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.slow
def test_fsdp_two_processes_match_one_process_resume_exactly_and_final_loads(data, tmp_path):
    opts, _ = data
    ref, sharded, resumed = tmp_path / "ref", tmp_path / "sharded", tmp_path / "resumed"
    train_here(*opts, "--batch-size", GLOBAL_BATCH, "--output-dir", ref)
    sharded_opts = [*opts, "--batch-size", 1, "--grad-accum", GLOBAL_BATCH // 2, "--activation-checkpointing"]
    proc = launch_fsdp(tmp_path, *sharded_opts, "--output-dir", sharded)
    assert "2 process(es) sharded with FSDP2" in proc.stdout

    one, two = losses(ref), losses(sharded)
    assert sorted(two) == list(range(1, STEPS + 1)) and two[STEPS] < two[1] - 0.1  # it trains
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, (step, one, two)
    norm1, norm2 = losses(ref, "grad_norm"), losses(sharded, "grad_norm")  # logged to 4 decimals
    assert all(abs(norm1[s] - norm2[s]) <= 2e-4 for s in norm1), (norm1, norm2)  # Adam would hide a scale error
    for step, val in losses(ref, "val_loss").items():
        assert abs(val - losses(sharded, "val_loss")[step]) < 1e-5
    ckpt = sharded / "checkpoints" / "step-00000002"
    assert {"pytorch_model_fsdp_0", "optimizer_0", "random_states_1.pkl"} <= {p.name for p in ckpt.iterdir()}

    with pytest.raises(ValueError, match="was written with --fsdp: resume it the same way"):
        train_here(*opts, "--batch-size", GLOBAL_BATCH, "--output-dir", tmp_path / "unsharded",
                   "--resume-from-checkpoint", ckpt)
    assert not (tmp_path / "unsharded").exists()
    launch_fsdp(tmp_path, *sharded_opts, "--output-dir", resumed, "--resume-from-checkpoint", ckpt)
    after = losses(resumed)
    assert sorted(after) == list(range(3, STEPS + 1))
    assert [after[s] for s in after] == [two[s] for s in after]  # bit-identical continuation

    # one FSDP unit per HopeBlock: the same losses, and the sharded checkpoint of the one-unit run resumes there
    blocks = tmp_path / "blocks"
    proc = launch_fsdp(tmp_path, *sharded_opts, "--fsdp-units", "block", "--output-dir", blocks)
    assert "sharded with FSDP2, one unit per HopeBlock" in proc.stdout
    per_block = losses(blocks)
    assert all(abs(one[s] - per_block[s]) < 1e-5 for s in one), (one, per_block)
    relaid = tmp_path / "relaid"
    launch_fsdp(tmp_path, *sharded_opts, "--fsdp-units", "block", "--output-dir", relaid, "--resume-from-checkpoint",
                ckpt)
    assert all(abs(v - two[s]) < 1e-5 for s, v in losses(relaid).items()), (losses(relaid), two)

    ids = torch.randint(3, 300, (2, 96), generator=torch.Generator().manual_seed(0))
    gathered = logits(sharded / "final", ids)
    assert torch.equal(gathered, logits(resumed / "final", ids))
    torch.testing.assert_close(gathered, logits(ref / "final", ids), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits(blocks / "final", ids), logits(ref / "final", ids), atol=1e-4, rtol=0)


def test_fsdp_unsupported_combinations_fail_before_anything_is_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    cases = [(["--optimizer", "m3"], "--fsdp does not support --optimizer m3"),
             (["--optimizer", "dmgd"], "--fsdp does not support --optimizer dmgd"),
             (["--cms-outer-periods", "4096", "65536"], "--fsdp does not support --cms-outer-periods"),
             (["--bf16", "--cpu"], "--fsdp --bf16 needs CUDA GPUs"),
             ([], "--fsdp shards over the processes of a distributed launch")]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            train.main(["--fsdp", *extra, "--output-dir", str(out)])
    with pytest.raises(ValueError, match="--fsdp-units chooses how --fsdp shards: pass --fsdp as well"):
        train.main(["--fsdp-units", "block", "--output-dir", str(out)])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # an FSDP launch config without --fsdp
    with pytest.raises(ValueError, match="pass --fsdp to hope-hf train as well"):
        train.main(["--output-dir", str(out)])
    assert not out.exists()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--fsdp", "--optimizer", "m3", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("hope-hf: error: --fsdp does not support")
    assert err.count("\n") == 1 and not out.exists()
