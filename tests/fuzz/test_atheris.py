"""Run the atheris harness briefly in the suite (longer runs: see fuzz_protocol.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed for this Python"
)
def test_coverage_guided_fuzzing_finds_no_crash(tmp_path: Path) -> None:
    harness = Path(__file__).with_name("fuzz_protocol.py")
    r = subprocess.run(
        [sys.executable, str(harness), "-runs=1500", "-seed=1", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 1500 runs" in r.stderr
