"""scripts/pg-test-server: one server per checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "pg-test-server"


def state_dir(script: Path, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "AUDITASPECT_PG_STATE"}
    environment.update(env)
    return subprocess.run(
        [str(script), "state"], capture_output=True, text=True, check=True, env=environment
    ).stdout.strip()


@pytest.mark.skipif(not SCRIPT.exists(), reason="run from a checkout")
def test_each_checkout_has_its_own_state_directory(tmp_path):
    """Two checkouts never share (or stop) one server; AUDITASPECT_PG_STATE overrides."""
    other = tmp_path / "other-checkout" / "scripts"
    other.mkdir(parents=True)
    shutil.copy(SCRIPT, other / "pg-test-server")
    mine, theirs = state_dir(SCRIPT), state_dir(other / "pg-test-server")
    assert mine != theirs
    assert mine == state_dir(SCRIPT)  # stable for one checkout
    assert "/tmp/chosen" == state_dir(SCRIPT, AUDITASPECT_PG_STATE="/tmp/chosen")
