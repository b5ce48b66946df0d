"""Bad input and faults as a new user meets them (issue 13): each ends in a one-line error naming the file and the
cause (exit status 2 from the CLI, a traceback only with --debug), or works; nothing is written or lost."""

import hashlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from hope_hf import HopeConfig, HopeForCausalLM, cli, train

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tok, **kw):
    return HopeConfig.from_preset("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **kw)


def save_model(path, tok, seed=0):
    torch.manual_seed(seed)
    model = HopeForCausalLM(tiny_config(tok)).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("model") / "hope"
    save_model(path, tokenizer)
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def snapshot(root: Path) -> dict:
    """Every file under root (hidden ones included) with the hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli_error(argv, capsys) -> str:
    """Run `hope-hf ARGV` in this process; assert exit status 2 and no traceback; return the error line."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    line = [x for x in err.splitlines() if x.strip()][-1]
    assert line.startswith("hope-hf: error: "), err
    return line


def shim(*argv, cwd, file_size_limit=None):
    """`python -m hope_hf_cli ARGV` in a fresh process; with `file_size_limit` (bytes) every larger write fails
    (EFBIG), as on a full disk."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "hope_hf_cli", *map(str, argv)], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=limit if file_size_limit else None)


def last_line(text: str) -> str:
    return [x for x in text.splitlines() if x.strip()][-1]


# -- the model: empty and all-padding inputs ----------------------------------------------------------------------

def test_empty_and_all_padding_inputs_raise_a_clear_error(model, tokenizer):
    with pytest.raises(ValueError, match="the input has 0 tokens"):
        model(input_ids=torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="the input has 0 tokens"):
        model.generate(**tokenizer("", return_tensors="pt"), max_new_tokens=3)
    pad = torch.full((2, 5), tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="marks every input position as padding"):
        model(input_ids=pad, attention_mask=torch.zeros_like(pad))
    with pytest.raises(ValueError, match="marks every input position as padding"):   # generate builds the mask
        model.generate(pad, max_new_tokens=3, pad_token_id=tokenizer.pad_token_id)


def test_empty_prompt_on_the_command_line_works(model_dir, capsys):
    text = cli.main(["generate", "--model", str(model_dir), "--prompt", "", "--max-new-tokens", "3"])
    assert isinstance(text, str) and capsys.readouterr().out == text + "\n"


# -- tokenizers pad on the left ------------------------------------------------------------------------------------

def test_saved_tokenizers_pad_left_and_batched_generate_equals_each_prompt_alone(model, model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.padding_side == "left"
    prompts = ["The json module", "Ordered dictionaries remember the insertion order", "A"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    batched = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)[:, -6:]
    for row, prompt in zip(batched, prompts):
        alone = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=6, do_sample=False,
                               pad_token_id=tok.pad_token_id)[0, -6:]
        assert torch.equal(row, alone), prompt


def test_train_saves_a_left_padding_tokenizer_even_from_a_right_padding_one(tokenizer, tmp_path):
    from argparse import Namespace

    tokenizer.padding_side = "right"
    try:
        tokenizer.save_pretrained(tmp_path / "tok")
    finally:
        tokenizer.padding_side = "left"
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["padding_side"] == "right"
    tok = train.load_tokenizer(Namespace(tokenizer=str(tmp_path / "tok")), None, None, None)
    assert tok.padding_side == "left"


# -- training: divergence, atomic outputs, bad inputs ----------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer_texts):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(t.split()) for t in tokenizer_texts[:150]))
    return path


TRAIN = ["--block-size", "128", "--per-device-train-batch-size", "2", "--vocab-size", "300", "--val-blocks", "2",
         "--sample-tokens", "0"]


def run_train(*argv):
    try:
        return train.main([*TRAIN, *map(str, argv)])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_non_finite_loss_stops_training_and_saves_nothing_new(corpus, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"training diverged at step (\d+): loss nan.*nothing was saved for this step "
                                         r".*no final model.*lower --learning-rate") as e:
        run_train("--dataset", corpus, "--output-dir", out, "--max-steps", 8, "--warmup-steps", 1,
                  "--learning-rate", 1e30, "--save-steps", 1)
    step = int(e.value.args[0].split("step ")[1].split(":")[0])
    assert step >= 2
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == [f"step-{s:08d}" for s in range(1, step)]                   # nothing hidden or partial either
    assert f"the last checkpoint is {out / 'checkpoints' / ckpts[-1]}" in e.value.args[0]
    assert not (out / "final").exists() and not (out / ".tmp-final").exists()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log) == step - 1
    assert all(math.isfinite(v) for r in log for v in r.values())


def test_truncated_checkpoint_or_tokenizer_is_named_and_nothing_changes(corpus, tmp_path):
    out = tmp_path / "out"
    run_train("--dataset", corpus, "--output-dir", out, "--max-steps", 1, "--eval-steps", 1)
    ckpt = out / "checkpoints" / "step-00000001"
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"cannot read the checkpoint {ckpt}: .*deserializing header"):
        run_train("--dataset", corpus, "--output-dir", out, "--max-steps", 2, "--resume-from-checkpoint", "latest")
    assert snapshot(tmp_path) == before
    tok_json = out / "final" / "tokenizer.json"
    tok_json.write_text(tok_json.read_text()[:2000])
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"could not load the tokenizer '{out / 'final'}'"):
        run_train("--dataset", corpus, "--output-dir", tmp_path / "other", "--tokenizer", out / "final")
    assert snapshot(tmp_path) == before


def test_header_only_csv_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    data = tmp_path / "header_only.csv"
    data.write_text("text\n")
    line = cli_error(["train", "--dataset", str(data), "--output-dir", str(tmp_path / "out")], capsys)
    assert f"could not read {str(data)!r}: it holds no rows" in line
    assert not (tmp_path / "out").exists()


def test_corpus_too_small_changes_nothing_even_with_overwrite_output_dir(tmp_path):
    """The corpus is checked before the trained tokenizer is saved or an earlier run's checkpoints are deleted."""
    data = tmp_path / "small.txt"
    data.write_text("a few words\nand a few more\n")
    old = tmp_path / "out" / "checkpoints" / "step-00000003"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text("{}")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="the corpus is empty or too small"):
        run_train("--dataset", data, "--output-dir", tmp_path / "out", "--overwrite-output-dir")
    assert snapshot(tmp_path) == before and not (tmp_path / "out" / "tokenizer").exists()


def test_unwritable_output_dir_is_refused_before_anything_is_written(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = cli_error(["train", "--output-dir", str(blocker / "run")], capsys)
    assert f"cannot write the output directory {blocker / 'run'}: {blocker} exists and is not a directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="exists and is not a directory"):
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        cli.main(["train", "--debug", "--output-dir", str(blocker / "run")])


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_names_the_file_and_leaves_no_partial_output(corpus, tmp_path):
    r = shim("train", *TRAIN, "--dataset", corpus, "--output-dir", "out", "--max-steps", 1,
             cwd=tmp_path, file_size_limit=400_000)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    line = last_line(r.stderr)
    assert line.startswith("hope-hf: error: could not write out/checkpoints/step-00000001:"), line
    assert "File too large" in line
    assert list((tmp_path / "out" / "checkpoints").iterdir()) == []             # the temporary dir was removed
    assert not (tmp_path / "out" / "final").exists()


def test_final_is_replaced_atomically(tokenizer, tmp_path):
    """save_final writes a temporary directory and renames it: a save that fails half way (file size limit, as on a
    full disk) keeps the previous final/ byte for byte and leaves no temporary directory."""
    tokenizer.save_pretrained(tmp_path / "tok")
    code = textwrap.dedent(f"""
        import hashlib, json, resource, signal
        from argparse import Namespace
        from pathlib import Path
        from transformers import AutoTokenizer
        from hope_hf import HopeConfig, HopeForCausalLM
        from hope_hf.train import save_final
        out = Path({str(tmp_path / "out")!r})
        snapshot = lambda: {{str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                             for p in sorted(out.rglob("*")) if p.is_file()}}
        tok = AutoTokenizer.from_pretrained({str(tmp_path / "tok")!r})
        cfg = HopeConfig.from_preset("tiny", vocab_size=len(tok))
        args = Namespace(output_dir=out, dataset="data/wiki.txt", streaming=False, seq_len=128, max_steps=1,
                         batch_size=2, grad_accum=1, optimizer="adamw", lr=1e-3, weight_decay=0.1,
                         cms_outer_periods=None, preset="tiny")
        save_final(HopeForCausalLM(cfg), tok, args, 5.0, 100)
        before = snapshot()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            save_final(HopeForCausalLM(cfg), tok, args, 4.0, 200)
            error = None
        except OSError as e:
            error = str(e)
        print(json.dumps({{"before": before, "after": snapshot(), "error": error}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(last_line(r.stdout))
    assert result["error"] and result["error"].startswith(f"could not write {tmp_path / 'out' / 'final'}: ")
    assert "File too large" in result["error"]
    assert result["after"] == result["before"]                                  # old final/ intact, no leftovers
    assert {"final/model.safetensors", "final/config.json", "final/README.md"} <= set(result["before"])
    card = (tmp_path / "out" / "final" / "README.md").read_text()
    assert "\n# hope-tiny-wiki\n" in card and "# final" not in card


# -- generate: sessions ------------------------------------------------------------------------------------------------

def gen(model_dir, *argv):
    return ["generate", "--model", str(model_dir), "--max-new-tokens", "4", *map(str, argv)]


@pytest.fixture()
def session(model_dir, tmp_path, capsys):
    path = tmp_path / "s" / "chat.safetensors"
    cli.main(gen(model_dir, "--prompt", "The json module", "--session", path))
    capsys.readouterr()
    return path


def test_resumed_session_is_announced(model_dir, session, capsys):
    n = len(json.loads(Path(str(session) + ".ids.json").read_text())["ids"])
    reply = cli.main(gen(model_dir, "--prompt", " and more", "--session", session))
    out, err = capsys.readouterr()
    assert f"continuing the session {session} ({n} tokens so far)" in err and out == reply + "\n"


def test_session_from_other_weights_with_the_same_config_is_refused(model_dir, session, tokenizer, tmp_path, capsys):
    other = tmp_path / "other"
    save_model(other, tokenizer, seed=1)
    before = snapshot(session.parent)
    line = cli_error(gen(other, "--prompt", "x", "--session", session), capsys)
    assert f"the memory session in {session} was made with other weights" in line
    assert snapshot(session.parent) == before


def test_truncated_or_incomplete_sessions_name_the_file(model_dir, session, capsys):
    data = session.read_bytes()
    session.write_bytes(data[: len(data) // 2])
    before = snapshot(session.parent)
    line = cli_error(gen(model_dir, "--prompt", "x", "--session", session), capsys)
    assert f"cannot read the memory session {session}: " in line and "truncated" in line
    session.write_bytes(data)
    ids = Path(str(session) + ".ids.json")
    ids.unlink()
    before = snapshot(session.parent)
    line = cli_error(gen(model_dir, "--prompt", "x", "--session", session), capsys)
    assert f"{ids} is missing" in line
    assert snapshot(session.parent) == before


def test_session_in_an_unwritable_place_is_refused_before_generating(model_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = cli_error(gen(model_dir, "--prompt", "x", "--session", blocker / "s.safetensors"), capsys)
    assert f"cannot write the session directory {blocker}: {blocker} exists and is not a directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_truncated_model_file_names_the_model(model_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = cli_error(gen(broken, "--prompt", "x"), capsys)
    assert f"cannot load the model {broken}: " in line and "deserializing header" in line


@pytest.mark.slow
def test_reply_is_printed_when_saving_the_session_fails(model_dir, session, tmp_path):
    before = snapshot(session.parent)
    r = shim(*gen(model_dir, "--prompt", " again", "--session", session), cwd=tmp_path, file_size_limit=200_000)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stdout.strip(), "the reply was not printed"
    line = last_line(r.stderr)
    assert line.startswith(f"hope-hf: error: could not write {session}: ") and "File too large" in line, line
    assert snapshot(session.parent) == before                                   # old session intact, no temp files


def test_sampling_options_need_do_sample(model_dir, capsys):
    line = cli_error(gen(model_dir, "--prompt", "x", "--temperature", "0.5", "--top-p", "0.9"), capsys)
    assert "--temperature, --top-p only take effect when sampling: add --do-sample" in line
    text = cli.main(gen(model_dir, "--prompt", "x", "--do-sample", "--temperature", "0.7", "--top-k", "5",
                        "--top-p", "0.9", "--repetition-penalty", "1.2", "--device", "cpu"))
    assert capsys.readouterr().out == text + "\n"


def test_bad_device_is_a_one_line_error(model_dir, capsys):
    assert "--device 'gpu0': " in cli_error(gen(model_dir, "--prompt", "x", "--device", "gpu0"), capsys)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in cli_error(gen(model_dir, "--prompt", "x", "--device", "cuda"), capsys)


def test_beam_search_runs_and_cannot_carry_a_session(model_dir, tmp_path, capsys):
    text = cli.main(gen(model_dir, "--prompt", "The json module", "--num-beams", "2"))
    assert capsys.readouterr().out == text + "\n"
    line = cli_error(gen(model_dir, "--prompt", "x", "--num-beams", "2", "--session", tmp_path / "s.st"), capsys)
    assert "--num-beams > 1 cannot continue a --session" in line
    assert list(tmp_path.iterdir()) == []


# -- long blocks -------------------------------------------------------------------------------------------------------

def test_long_blocks_pack_from_many_short_documents(tokenizer):
    """Packing cuts blocks inside each map batch; batches grow so a long block fills (1000 documents of a few tokens
    used to give no block of 4096 tokens at all)."""
    import datasets

    from hope_hf.data import pack_texts, prepare_blocks

    texts = [f"document {i} has a few words" for i in range(5000)]
    n1000 = sum(len(ids) + 1 for ids in tokenizer(texts[:1000], add_special_tokens=False)["input_ids"])
    seq_len = (n1000 // 64 + 1) * 64                                     # longer than 1000 documents
    assert pack_texts({"text": texts[:1000]}, tokenizer, "text", seq_len)["input_ids"] == []
    total = len(pack_texts({"text": texts}, tokenizer, "text", seq_len)["input_ids"])
    blocks = prepare_blocks(datasets.Dataset.from_dict({"text": texts}), tokenizer, seq_len, val_blocks=1)
    assert total >= 4 and blocks.num_train + len(blocks.val) == total   # as if packed in one piece


# -- remote code across transformers versions ----------------------------------------------------------------------

REMOTE = """
import sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
m = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
ids = tok("The json module is", return_tensors="pt").input_ids
a = m.generate(ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
cache = a["cache"] if "cache" in a else a["past_key_values"]
assert type(cache).__name__ == "HopeCache", type(cache)
assert torch.equal(a.sequences, m.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False))
more = torch.cat([a.sequences, ids], 1)
name = "cache" if "cache" in a else "past_key_values"
cont = m.generate(more, max_new_tokens=3, do_sample=False, **{name: cache})
assert torch.equal(cont, m.generate(more, max_new_tokens=3, do_sample=False, use_cache=False))
try:
    m(input_ids=torch.zeros(1, 0, dtype=torch.long))
    raise SystemExit("no error for an empty input")
except ValueError as e:
    assert "0 tokens" in str(e)
print("RESULT", transformers.__version__, type(m).__module__)
"""
# interpreters with other transformers versions to check too (e.g. the oldest allowed), os.pathsep-separated
OTHER_PYTHONS = [p for p in os.environ.get("HOPE_HF_OTHER_PYTHONS", "").split(os.pathsep) if p]


@pytest.mark.parametrize("python", [sys.executable, *OTHER_PYTHONS])
def test_remote_code_generates_with_a_carried_cache(python, model_dir, tmp_path):
    """The saved Hub-facing files, loaded with trust_remote_code=True where hope_hf is not imported, under this
    environment's transformers (CI installs the newest allowed) and any in HOPE_HF_OTHER_PYTHONS."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    r = subprocess.run([python, "-c", REMOTE, str(model_dir)], check=False, cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _, version, module = next(x for x in r.stdout.splitlines() if x.startswith("RESULT")).split()
    assert module.startswith("transformers_modules."), module
    print(f"remote code OK with transformers {version}")
