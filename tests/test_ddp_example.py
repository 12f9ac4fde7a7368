"""examples/ddp.py under torchrun: two CPU ranks on gloo, end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ddp
def test_ddp_example_under_torchrun() -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(ROOT / "examples" / "ddp.py"), "--epochs", "3", "--samples", "6000",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    # rank 0 reports; each rank took ceil(0.1 · 6000 / (128 · 2)) = 3 steps per epoch
    assert out.stdout.count("steps/rank 3") == 3
    final = re.search(r"final: 2 ranks, test acc ([\d.]+)%", out.stdout)
    assert final is not None, out.stdout
    assert float(final.group(1)) > 60.0  # 10 classes: chance is 10%
