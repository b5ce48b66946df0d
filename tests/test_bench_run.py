"""`benchmarks.run` (the driver) and `benchmarks.readme` (the README table generated from the JSON results)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repo root

from benchmarks import readme, run


def test_run_writes_each_result_and_a_summary(tmp_path):
    summary = run.run(quick=True, only=["decode_tiny"], out=tmp_path)
    assert json.loads((tmp_path / "run_quick.json").read_text()) == json.loads(json.dumps(summary))
    assert list(summary["benchmarks"]) == ["decode_tiny"] and summary["wall_time_s"] > 0
    decode = json.loads((tmp_path / "decode_tiny.json").read_text())
    assert decode["quick"] is True and [r["prompt_tokens"] for r in decode["rows"]] == [256, 2048]
    text = "\n".join(readme.sections(tmp_path))
    assert "### Decode, tiny" in text and "| 2048 |" in text and "decode_tiny.png)" in text


def test_run_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark"):
        run.run(only=["nope"], out=tmp_path)



def test_committed_results_render_in_the_current_format():
    text = "\n".join(readme.sections())
    assert "predates the current format" not in text
    for name, _, title, _ in readme.SECTIONS:
        if (readme.RESULTS / f"{name}.json").exists():
            assert f"### {title}" in text
