"""Regenerate the README's benchmark section from benchmarks/results/*.json (no number is typed by hand).

    python -m benchmarks.readme

Each section is the benchmark module's own `markdown(results)`, preceded by the command, the machine it ran on (as
recorded in the JSON), its wall time and how busy other processes kept the CPUs, and followed by its plot.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- benchmarks -->", "<!-- /benchmarks -->"

# result file -> (module with `markdown`, title, command)
SECTIONS = [
    ("speed", "speed", "Training speed (CPU, float32, batch 1)", "python -m benchmarks.speed"),
    ("decode_tiny", "decode", "Decode, tiny (CPU, batch 1)", "python -m benchmarks.decode --preset tiny"),
    ("decode_small", "decode", "Decode, small (CPU, batch 1)", "python -m benchmarks.decode --preset small"),
    ("lm_quality", "lm_quality", "Language-modelling quality", "python -m benchmarks.lm_quality"),
    ("ablations", "ablations", "Ablations (Table 6 at small scale)", "python -m benchmarks.ablations"),
    ("continual", "continual", "Continual learning (docs -> code)", "python -m benchmarks.continual"),
    ("recall", "recall", "In-context associative recall", "python -m benchmarks.recall"),
    ("optimizers", "optimizers", "Optimizers (Hope tiny, AdamW vs M3 vs DMGD)", "python -m benchmarks.optimizers"),
    ("gpu_speed", "speed", "GPU training speed (bf16 autocast)", "bash benchmarks/gpu.sh"),
    ("gpu_decode", "decode", "GPU decode (bf16 autocast)", "bash benchmarks/gpu.sh"),
]


def machine_line(d: dict) -> str:
    m = d.get("machine", {})
    parts = [f"{m['cpu_count']} CPU cores ({m.get('processor', '?')})" if "cpu_count" in m else None,
             f"torch {m['torch']}" if "torch" in m else None,
             f"{m['torch_threads']} torch threads" if "torch_threads" in m else None,
             f"wall time {d['wall_time_s'] / 60:.1f} min" if "wall_time_s" in d else None,
             (f"other processes kept {m['other_processes_avg_cores_busy']:.2f} cores busy"
              if "other_processes_avg_cores_busy" in m else None)]
    return "; ".join(p for p in parts if p)


def gpu_smoke_section(d: dict) -> list[str]:
    sm = d["bf16_smoke"]
    text = (f"`python -m benchmarks.gpu_smoke` on {d['device']}, torch {d['torch']}: bf16 training of Hope tiny "
            f"{'finite' if sm['all_finite'] else 'NOT finite'} over {sm['steps']} steps "
            f"(loss {sm['first_loss']:.3f} -> {sm['last_loss']:.3f}).")
    lines = ["### GPU bf16 smoke test", "", text]
    t, dec = d.get("train_tokens_per_s_bf16_autocast"), d.get("decode_ms_per_token")
    if t and dec:
        lines += ["", "| model | train tok/s @512 | train tok/s @2048 | decode ms/token after 256 | after 2048 |",
                  "|---|---|---|---|---|"]
        for name, pkey in (("hope_small", "hope_small"), ("llama", "llama_matched")):
            lines.append(f"| {name} ({d['params'][pkey] / 1e6:.1f}M) | {t[name + '@512']:.0f} | "
                         f"{t[name + '@2048']:.0f} | {dec[name + '@256']:.1f} | {dec[name + '@2048']:.1f} |")
    return lines


def sections(results: Path = RESULTS) -> list[str]:
    lines = []
    run = results / "run.json"
    if run.exists():
        d = json.loads(run.read_text())
        lines += [f"Last full `python -m benchmarks.run`: {machine_line(d)}; per benchmark: "
                  + ", ".join(f"{k} {v['wall_time_s'] / 60:.1f} min" for k, v in d["benchmarks"].items()) + "."]
    quick = results / "quick" / "run_quick.json"
    if quick.exists():
        d = json.loads(quick.read_text())
        lines += ["", f"Last `python -m benchmarks.run --quick` (smoke settings, numbers not meaningful): "
                  f"{d['wall_time_s'] / 60:.1f} min in all."]
    for name, module, title, command in SECTIONS:
        path = results / f"{name}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        try:
            table = importlib.import_module(f"benchmarks.{module}").markdown(d)
        except KeyError as e:  # a result file from before a format change
            table = f"(`{path.name}` predates the current format (no {e}); rerun `{command}`)"
        lines += ["", f"### {title}", "", f"`{command}`; {machine_line(d)}.", "", table]
        png = path.with_suffix(".png")
        if png.exists():
            link = png.resolve().relative_to(ROOT) if png.resolve().is_relative_to(ROOT) else png
            lines += ["", f"![{title}]({link.as_posix()})"]
    if (results / "gpu_smoke.json").exists():
        lines += [""] + gpu_smoke_section(json.loads((results / "gpu_smoke.json").read_text()))
    return lines


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, _, rest = text.partition(START)
    tail = rest.partition(END)[2] if END in rest else rest
    readme.write_text(head + START + "\n" + "\n".join(sections()) + "\n" + END + tail)


if __name__ == "__main__":
    main()
