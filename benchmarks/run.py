"""Run every CPU benchmark in one go, then regenerate the README's results section.

    python -m benchmarks.run [--quick] [--only NAME ...] [--out benchmarks/results]

Benchmarks, in order (each is also runnable alone as `python -m benchmarks.<module>`):
speed (training tokens/s and FLOP/s vs Llama, fast vs reference memories), decode_tiny / decode_small (ms/token and
state bytes vs Llama's KV cache), lm_quality (perplexity on two corpora), ablations (Table 6), continual (forgetting
A -> B), recall (associative recall at L, 2L, 4L). `--quick` runs each one's smallest setting (a smoke run, ~10
minutes on 2 cores); the full run takes ~60 minutes. Timings are only meaningful on an otherwise idle machine: every
JSON records how many cores other processes kept busy. Writes `<out>/run.json` (what ran, wall times) and, for the
default results folder, the README table (`benchmarks.readme`). With `--only`, run.json keeps the other benchmarks'
entries from earlier runs and `sum_of_benchmark_wall_times_s` adds them all up.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from benchmarks import common


def _speed(quick, out):
    from benchmarks import speed

    return speed.run(out=out, **(speed.QUICK if quick else {}))


def _decode(preset):
    def go(quick, out):
        from benchmarks import decode

        return decode.run(preset, out_dir=Path(out), quick=quick, **(decode.QUICK if quick else {}))
    return go


def _module(name):
    def go(quick, out):
        return importlib.import_module(f"benchmarks.{name}").run(quick=quick, out=out)
    return go


BENCHMARKS = {"speed": _speed, "decode_tiny": _decode("tiny"), "decode_small": _decode("small"),
              "lm_quality": _module("lm_quality"), "ablations": _module("ablations"),
              "continual": _module("continual"), "recall": _module("recall")}
QUICK_SKIP = ("decode_small",)  # the quick run decodes with tiny only


def run(quick: bool = False, only=None, out=common.RESULTS, readme: bool | None = None) -> dict:
    names = list(only) if only else [n for n in BENCHMARKS if not (quick and n in QUICK_SKIP)]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    bench = common.Run()
    summary = {"quick": quick, "benchmarks": {}}
    for name in names:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        BENCHMARKS[name](quick, out)
        summary["benchmarks"][name] = {"wall_time_s": time.perf_counter() - start,
                                       "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        print(f"== {name}: {summary['benchmarks'][name]['wall_time_s']:.0f} s", flush=True)
    bench.finish(summary)
    path = Path(out) / ("run_quick.json" if quick else "run.json")
    if only and path.exists():  # a subset: keep the other benchmarks' entries of the previous runs
        previous = json.loads(path.read_text())["benchmarks"]
        summary["benchmarks"] = {**{k: v for k, v in previous.items() if k not in names}, **summary["benchmarks"]}
    summary["sum_of_benchmark_wall_times_s"] = sum(v["wall_time_s"] for v in summary["benchmarks"].values())
    common.write_results(out, path.stem, summary)
    if readme if readme is not None else Path(out).resolve() == common.RESULTS.resolve():
        from benchmarks import readme as readme_mod

        readme_mod.main()
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="each benchmark's smallest setting (~10 minutes)")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"a subset of {list(BENCHMARKS)}")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results, --quick: .../quick)")
    a = p.parse_args(argv)
    a.out = a.out or (common.QUICK_RESULTS if a.quick else common.RESULTS)
    s = run(a.quick, a.only, a.out)
    for name, r in s["benchmarks"].items():
        print(f"{name:>14}: {r['wall_time_s']:7.0f} s")
    print(f"{'this run':>14}: {s['wall_time_s']:7.0f} s; all benchmarks in run.json: "
          f"{s['sum_of_benchmark_wall_times_s']:.0f} s")


if __name__ == "__main__":
    main()
