"""The suite exercises the installed package, never the working-tree copy."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import auditaspect
from conftest import ROOT, source_tree_problem


def test_imported_copy_is_the_installed_one():
    """``auditaspect`` comes from this interpreter's site-packages, not from the checkout."""
    imported = Path(auditaspect.__file__).resolve().parent
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert site_packages / "auditaspect" == imported
    assert not imported.is_relative_to(ROOT / "auditaspect")
    assert source_tree_problem() is None


def test_running_from_the_repository_root_is_refused():
    """``python -m pytest`` in the checkout would import the source tree: the suite refuses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_layout.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert 4 == result.returncode, result.stdout + result.stderr
    assert "working-tree copy of auditaspect" in result.stderr
