"""benchmarks/gpu.sh cannot rot: its dry run (tiny sizes, Triton's CPU interpreter) runs every path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu.sh"


def test_the_gpu_script_dry_run_writes_parity_and_timings(tmp_path):
    out = tmp_path / "dry.json"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["machine"]["dry_run"] and result["machine"]["triton_interpreter"]
    parity = result["parity"]
    assert {r["dtype"] for r in parity} == {"float32", "bfloat16"} and {r["head_width"] for r in parity} == {
        24,
        40,
        64,
    }
    assert all(r["ok"] for r in parity)
    timed = {(r["impl"], r["mode"]) for r in result["timing"] if "ms" in r}
    assert {("triton", "fwd+bwd"), ("torch", "fwd+bwd"), ("sdpa", "fwd")} <= timed
