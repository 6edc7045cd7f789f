"""benchmarks/train_step.py cannot rot: its --quick run checks loss parity with transformers' LLaVA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "train_step.py"


def test_the_train_step_benchmark_quick_run_matches_transformers_loss():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "ok" in proc.stdout and "vlmzoo / transformers: time" in proc.stdout
