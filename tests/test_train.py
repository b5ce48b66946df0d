"""hope-hf train / generate: loss falls, exact resume, streaming, bad inputs, 2-process data parallel (gloo)."""

import json
import os
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState
from multiproc import launch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hope_hf import generate, train

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--seq-len", "128", "--batch-size", "4", "--vocab-size", "300", "--val-blocks", "8", "--sample-tokens", "0"]


def run_train(*argv):
    """`hope_hf.train.main` in this process, with Accelerate's singletons reset afterwards."""
    try:
        return train.main([*SMALL, *map(str, argv)])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def records(out: Path, key: str) -> dict[int, float]:
    lines = (json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines())
    return {r["step"]: r[key] for r in lines if key in r}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """12 steps on the embedded corpus, a BPE trained on it, checkpoints at steps 6 and 12."""
    out = tmp_path_factory.mktemp("run")
    run_train("--max-steps", 12, "--save-every", 6, "--eval-every", 12, "--keep-checkpoints", 0,
              "--output-dir", out)
    return out


@pytest.mark.slow
def test_loss_falls_on_the_embedded_corpus_and_outputs_are_written(run):
    val = records(run, "val_loss")
    assert set(val) == {0, 12} and val[12] < val[0] - 0.1, val
    loss = list(records(run, "loss").values())
    assert len(loss) == 12 and sum(loss[-3:]) / 3 < sum(loss[:3]) / 3
    grad_norm = list(records(run, "grad_norm").values())              # the total norm before clipping, per step
    assert len(grad_norm) == 12 and all(0 < g < float("inf") for g in grad_norm)
    assert (run / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000006", "step-00000012"]
    final = run / "final"
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in final.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert model.config.vocab_size == len(tok) and model.config.model_type == "hope"


@pytest.mark.slow
def test_resume_from_a_mid_run_checkpoint_reproduces_the_losses_exactly(run, tmp_path):
    run_train("--max-steps", 12, "--save-every", 6, "--eval-every", 12, "--output-dir", tmp_path,
              "--resume-from-checkpoint", run / "checkpoints" / "step-00000006")
    full, resumed = records(run, "loss"), records(tmp_path, "loss")
    assert sorted(resumed) == list(range(7, 13))
    assert [resumed[s] for s in resumed] == [full[s] for s in resumed]  # bit-identical
    assert records(tmp_path, "val_loss")[12] == records(run, "val_loss")[12]


@pytest.mark.slow
def test_resume_latest_in_place_keeps_the_log_consistent(run, tmp_path):
    out = tmp_path / "out"
    run_train("--max-steps", 4, "--save-every", 2, "--eval-every", 4, "--output-dir", out, "--tokenizer",
              run / "final")
    before = (out / "train_log.jsonl").read_text()
    run_train("--max-steps", 4, "--save-every", 2, "--eval-every", 4, "--output-dir", out, "--tokenizer",
              run / "final", "--resume-from-checkpoint", "latest")
    assert (out / "train_log.jsonl").read_text() == before  # nothing left to train: no duplicate records
    with pytest.raises(ValueError, match="already holds checkpoints.*--resume-from-checkpoint latest"):
        run_train("--max-steps", 4, "--output-dir", out, "--tokenizer", run / "final")


@pytest.mark.slow
def test_streaming_local_text_file_trains(run, tmp_path, tokenizer_texts):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tokenizer_texts))
    out = tmp_path / "out"
    run_train("--dataset", corpus, "--streaming", "--max-steps", 3, "--val-blocks", 4, "--eval-every", 3,
              "--output-dir", out, "--tokenizer", run / "final", "--tbptt-segments", 2)
    assert sorted(records(out, "loss")) == [1, 2, 3] and 3 in records(out, "val_loss")
    assert (out / "final" / "model.safetensors").exists()


def test_bad_inputs_fail_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="sequence length 100 does not fit"):
        train.main(["--seq-len", "100", "--output-dir", str(out)])
    with pytest.raises(ValueError, match="multiple of 256.*4 TBPTT segments"):
        train.main(["--seq-len", "128", "--tbptt-segments", "4", "--output-dir", str(out)])
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        run_train("--dataset", "no-such-user/no-such-data", "--output-dir", out)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"body": "some text"}) + "\n")
    with pytest.raises(ValueError, match="text column 'text' not found; available columns: 'body'"):
        run_train("--dataset", data, "--output-dir", out, "--tokenizer", "does-not-matter")
    with pytest.raises(ValueError, match="could not load the tokenizer 'no-such-tokenizer'"):
        run_train("--output-dir", out, "--tokenizer", "no-such-tokenizer")
    assert not out.exists()


@pytest.mark.slow
def test_checkpoint_from_another_config_is_refused(run, tmp_path):
    ckpt = run / "checkpoints" / "step-00000006"
    with pytest.raises(ValueError, match="another model config.*hidden_size: checkpoint 64 vs now 384"):
        run_train("--preset", "small", "--output-dir", tmp_path / "out", "--resume-from-checkpoint", ckpt)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_generate_carries_a_memory_session(run, tmp_path, capsys):
    session = tmp_path / "s.safetensors"
    args = ["--model", str(run / "final"), "--max-new-tokens", "5", "--session", str(session)]
    generate.main([*args, "--prompt", "The json module"])
    ids = json.loads(Path(str(session) + ".ids.json").read_text())["ids"]
    generate.main([*args, "--prompt", " and pickle"])
    ids2 = json.loads(Path(str(session) + ".ids.json").read_text())["ids"]
    assert ids2[: len(ids)] == ids and len(ids2) > len(ids) + 5
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.slow
def test_two_process_accelerate_launch(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): TBPTT + gradient accumulation train in sync
    and every rank reads its own data."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = launch(lambda port: [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "hope_hf.train", *SMALL, "--batch-size", "2", "--grad-accum", "2", "--tbptt-segments", "2",
        "--max-steps", "3", "--eval-every", "3", "--save-every", "3", "--debug-log-batches", "--output-dir", str(out)],
        env=env, timeout=300, cwd=REPO, out=out)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    hashes = [r["batch_hashes"] for r in log if "batch_hashes" in r]
    assert len(hashes) == 3 and all(len(h) == 2 and h[0] != h[1] for h in hashes), hashes
    (params,) = [r["param_hashes"] for r in log if "param_hashes" in r]
    assert len(params) == 2 and params[0] == params[1]
    ckpt = out / "checkpoints" / "step-00000003"
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= {p.name for p in ckpt.iterdir()}
    assert "2 process(es)" in proc.stdout


def test_cli_dispatches_and_reports_bad_input_in_one_line(capsys):
    from hope_hf import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--seq-len", "100"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("hope-hf: error: sequence length 100 does not fit")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fly"])
    assert exit_info.value.code == 2 and "usage: hope-hf {train,generate}" in capsys.readouterr().err


def test_compile_refuses_fsdp(tmp_path):
    with pytest.raises(ValueError, match="--compile is not supported with --fsdp"):
        run_train("--compile", "--fsdp", "--output-dir", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_completed_adam_state_changes_nothing():
    """`complete_adam_state` (before sharded checkpoints) gives a parameter without a gradient yet the state AdamW would
    create itself, so the run continues exactly as without it."""
    import torch

    from hope_hf.train import complete_adam_state

    runs = []
    for complete in (False, True):
        torch.manual_seed(0)
        late, early = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3))
        opt = torch.optim.AdamW([late, early], lr=0.1, weight_decay=0.01)
        for step in range(4):
            loss = (early ** 2).sum() + ((late ** 3).sum() if step >= 2 else 0)   # `late` gets gradients from step 2
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if complete:
                complete_adam_state(opt)
                assert set(opt.state[late]) == {"step", "exp_avg", "exp_avg_sq"}
        runs.append((late.detach().clone(), early.detach().clone(), opt.state[late]["step"].item()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1]) and runs[0][2] == runs[1][2] == 2
