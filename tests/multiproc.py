"""The multi-process tests' launcher: a free port per try, and one more try when a worker died by a signal."""

import re
import shutil
import socket
import subprocess
import warnings

# torch elastic (torchrun, accelerate launch) reports a worker killed by a signal as "exitcode: -6" and
# "Signal 6 (SIGABRT) received by PID ..."; a Python error exits with a positive code.
KILLED = re.compile(r"Signal \d+ \(SIG[A-Z]+\) received|exitcode\s*:\s*-\d+")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command, *, env, timeout, cwd=None, out=None, tail_lines=60) -> subprocess.CompletedProcess:
    """Run `command(port)` (the launcher's argv for a free port) and assert that it succeeded.

    A launch whose worker died by a signal (not a Python error) runs once more, after emptying `out`, with a warning
    that carries the first try's stderr: CI once saw a gloo worker abort (SIGABRT, no Python traceback) in a run that
    passes on every rerun here (a loaded 2-core machine). Set PYTHONFAULTHANDLER in `env` so that such an abort
    prints each thread's Python stack. A failure shows the last `tail_lines` lines of stderr."""
    for attempt in range(2):
        proc = subprocess.run(command(free_port()), check=False, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
        tail = "\n".join(proc.stderr.splitlines()[-tail_lines:])
        if proc.returncode == 0 or attempt or not KILLED.search(proc.stderr):
            break
        warnings.warn(f"a launched worker died by a signal; running the launch again. Its stderr ended with:\n{tail}")
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)
    assert proc.returncode == 0, tail
    return proc
