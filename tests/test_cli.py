"""The `hope-hf` command line: fast --help/--version (no torch import), defaults shown, HF-style option names with the
old names as aliases, and local-looking paths that never reach the Hub."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hope_hf import cli

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "accelerate", "hope_hf")


def _repo_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def shim(*argv, cwd, offline=True):
    """`python -m hope_hf_cli ARGV` (the console script's entry point) in a fresh process; (rc, stdout, stderr, s)."""
    env = _repo_env()
    if not offline:  # a name sent to the Hub would hang on retries here, not fail in a second
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            env.pop(var, None)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hope_hf_cli", *argv], check=False, cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr, time.perf_counter() - t0


def test_help_is_fast_and_imports_nothing_heavy(tmp_path):
    code = ("import sys, hope_hf_cli\n"
            "try:\n    hope_hf_cli.main(['train', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    for command in ("train", "generate"):
        rc, out, _, seconds = shim(command, "--help", cwd=tmp_path)
        assert rc == 0 and f"usage: hope-hf {command}" in out and seconds < 2.0, (rc, seconds)


def test_a_command_that_succeeds_exits_with_status_0(tmp_path, tokenizer):
    """The console script runs `sys.exit(hope_hf_cli.main())` (as `python -m hope_hf_cli` does): a command's result
    (train's checkpoint path, generate's text) must not become the exit status (a returned path gave 1)."""
    from test_cards_and_chat import _tiny_config

    from hope_hf import HopeForCausalLM

    HopeForCausalLM(_tiny_config(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    argv = ["generate", "--model", str(tmp_path / "model"), "--prompt", "The json module", "--max-new-tokens", "3"]
    wrapper = f"import sys, hope_hf_cli; sys.exit(hope_hf_cli.main({argv!r}))"       # what pip's script runs
    env = _repo_env()
    for command in ([sys.executable, "-c", wrapper], [sys.executable, "-m", "hope_hf_cli", *argv]):
        r = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip(), (command[1], r.returncode, r.stdout, r.stderr[-2000:])


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"hope-hf {version('hope-hf')}"


def test_help_shows_defaults_and_hf_style_names(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for names, default in [("--block-size N, --seq-len N", "256"), ("--per-device-train-batch-size N, --batch-size N",
                                                                    "8"),
                           ("--gradient-accumulation-steps N, --grad-accum N", "1"),
                           ("--learning-rate LR, --lr LR", "0.003"), ("--eval-steps N, --eval-every N", "100"),
                           ("--save-steps N, --save-every N", "100"), ("--save-total-limit N, --keep-checkpoints N",
                                                                       "2")]:
        assert names in text, names
        assert f"(default: {default})" in text.split(names, 1)[1].split("--", 1)[0], names
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = capsys.readouterr().out
    for flag in ("--top-k", "--num-beams", "--repetition-penalty", "--device", "--debug", "(default: 40)",
                 "(default: 0)"):
        assert flag in text, flag


def test_old_and_new_option_names_are_the_same_options(tmp_path):
    old = ["--seq-len", "512", "--batch-size", "3", "--grad-accum", "2", "--lr", "1e-3", "--eval-every", "7",
           "--save-every", "9", "--keep-checkpoints", "4", "--cpu", "--activation-checkpointing"]
    new = ["--block-size", "512", "--per-device-train-batch-size", "3", "--gradient-accumulation-steps", "2",
           "--learning-rate", "1e-3", "--eval-steps", "7", "--save-steps", "9", "--save-total-limit", "4",
           "--use-cpu", "--gradient-checkpointing"]
    a, b = cli.train_parser().parse_args(old), cli.train_parser().parse_args(new)
    assert vars(a) == vars(b)
    assert (a.seq_len, a.batch_size, a.grad_accum, a.lr, a.eval_every, a.save_every, a.keep_checkpoints) == (
        512, 3, 2, 1e-3, 7, 9, 4) and a.cpu and a.activation_checkpointing == "groups"
    assert cli.train_parser().parse_args(["--gradient-checkpointing", "spans"]).activation_checkpointing == "spans"
    assert cli.train_parser().parse_args([]).activation_checkpointing is None


def test_the_light_parser_agrees_with_the_package():
    from hope_hf import data, optim

    assert cli.OPTIMIZERS == optim.OPTIMIZERS and cli.EMBEDDED == data.EMBEDDED


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1e-3"])
def test_learning_rate_must_be_positive_and_finite(value, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", f"--learning-rate={value}"])
    assert e.value.code == 2 and "must be a positive finite number" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["data/does_not_exist.txt", "./missing", "../missing-dir", "/no/such/dir",
                                  "~/no-such-hope-hf-file", "corpus.jsonl", "data/*.csv", "sub/missing"])
def test_local_looking_dataset_paths_never_reach_the_hub(name, tmp_path, capsys, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dataset", name, "--output-dir", str(tmp_path / "out")])
    assert e.value.code == 2
    assert f"no such file or directory: {name}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]          # nothing written


def test_hub_like_names_are_left_for_the_hub():
    for name in ("wikitext", "user/dataset", "stdlib"):
        assert cli.local_or_hub(name) == name
    assert cli.model_path("user/hope-model") == "user/hope-model"
    with pytest.raises(ValueError, match="no such file or directory: missing_dir .a Hub model id has the form"):
        cli.model_path("missing_dir")


def test_missing_paths_fail_in_a_second_without_the_hub(tmp_path):
    """The console script, online settings: no retries, one line, exit status 2, nothing written."""
    rc, _, err, seconds = shim("train", "--dataset", "data/does_not_exist.txt", "--output-dir", "out", cwd=tmp_path,
                               offline=False)
    assert rc == 2 and "no such file or directory: data/does_not_exist.txt" in err and seconds < 2.0, (err, seconds)
    rc, _, err, seconds = shim("generate", "--model", "missing_dir", "--prompt", "hi", cwd=tmp_path, offline=False)
    assert rc == 2 and "no such file or directory: missing_dir" in err and seconds < 2.0, (err, seconds)
    assert list(tmp_path.iterdir()) == []


def test_load_text_dataset_refuses_a_missing_local_path():
    from hope_hf.data import load_text_dataset

    with pytest.raises(ValueError, match="no such file or directory: data/does_not_exist.txt"):
        load_text_dataset("data/does_not_exist.txt")


def test_default_threads_leave_one_core_per_machine_for_others(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert [cli.default_threads(c) for c in (1, 2, 4, 16)] == [1, 1, 3, 15]
    assert cli.default_threads(16, processes=2) == 7 and cli.default_threads(2, processes=2) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")                      # set by accelerate launch / torchrun
    assert cli.default_threads(16) == 3


@pytest.mark.parametrize("command", ["train", "generate"])
def test_threads_option_is_applied_and_printed_at_start(command, tmp_path, capsys, monkeypatch):
    import torch

    from hope_hf import generate, train

    assert cli.PARSERS[command]().parse_args([] if command == "train" else ["--model", str(tmp_path), "--prompt",
                                                                              "x"]).threads is None
    with pytest.raises(SystemExit) as e:
        cli.PARSERS[command]().parse_args(["--threads", "0"])
    assert e.value.code == 2 and "--threads: must be an integer >= 1" in capsys.readouterr().err
    monkeypatch.setattr(cli, "default_threads", lambda: 1)
    threads = torch.get_num_threads()
    try:
        for flag, n, how in ((["--threads", "2"], 2, "(--threads;"), ([], 1, "(default: cores per process - 1")):
            with pytest.raises(ValueError):               # a bad option right after the thread choice: nothing runs
                if command == "train":
                    train.main([*flag, "--block-size", "100"])
                else:
                    generate.main([*flag, "--model", str(tmp_path), "--prompt", "x", "--max-new-tokens", "0"])
            out = capsys.readouterr()
            assert f"threads: {n} torch thread(s) per process {how}" in (out.out + out.err)
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(threads)


ALLOCATOR_PROBE = """
import ctypes, os, sys
import hope_hf_cli

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] != "default":
    assert hope_hf_cli._load_cli().tune_allocator(lean=sys.argv[1] == "lean")
libc.free(libc.malloc(16 << 20))      # under glibc's defaults, freeing a mapped 16 MiB block raises the threshold to it
mapped = []
for size in (5 << 20, 300 << 10):
    before = libc.mallinfo2().hblks
    p = libc.malloc(size)
    mapped.append(str(libc.mallinfo2().hblks - before))
    libc.free(p)
print(*mapped, os.environ.get("MALLOC_MMAP_THRESHOLD_"), os.environ.get("THP_MEM_ALLOC_ENABLE"))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_allocator_maps_blocks_of_4_mib_and_up_or_256_kib_when_lean(tmp_path):
    """After `tune_allocator` (what `hope-hf` does before importing torch) a 5 MiB block is mapped on its own even
    after a 16 MiB block was freed, and with `lean` (activation checkpointing) a 300 KiB one too; under glibc's default
    dynamic threshold both come from the heap. The settings are in the environment for the processes it starts
    (accelerate's workers)."""
    env = {k: v for k, v in os.environ.items() if k not in cli.ALLOCATOR_ENV}
    env["PYTHONPATH"] = str(REPO)
    out = {}
    for mode in ("default", "tuned", "lean"):
        r = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, mode], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out[mode] = r.stdout.split()
    assert out["default"] == ["0", "0", "None", "None"]
    assert out["tuned"] == ["1", "0", "4194304", "1"]
    assert out["lean"] == ["1", "1", "262144", "1"]
