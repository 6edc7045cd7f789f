"""benchmarks/flatten_models.py cannot rot: its --quick mode (tiny presets, 64 px) runs on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "flatten_models.py"


def test_quick_mode_writes_every_pair_and_mode(tmp_path):
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["model"], r["mode"]) for r in rows} == {
        (m, mode) for m in ("flatten-pvt-tiny", "flatten-swin-tiny") for mode in ("fwd", "fwd+bwd")
    }
    assert all(r["ms"] > 0 and r["peer_ms"] > 0 for r in rows)
