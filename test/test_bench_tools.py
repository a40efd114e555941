"""The benchmark tools run and print their tables (no timing is checked)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_cloud_bench_prints_its_table():
    output = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "cloud_bench.py"), "--repeats", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    rows = [line for line in output.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| colour | depth | points_stride | segments |")
    assert len(rows) == 7  # header and 6 configurations
    for row in rows[1:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 11
        assert int(cells[3]) >= 20  # segments of the toy grid
        assert float(cells[-1]) > 0
