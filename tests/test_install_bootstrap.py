"""launch/install.sh brings pip and wheel up to date in the venv before it installs anything (issue 12, item 13).

Without that, a fresh venv keeps the pip its Python bundles and has no `wheel`, so deepspeed and rouge-score install
through the deprecated `setup.py install` path. The real script runs here in a fresh venv of its own (never in the
shared one); it needs PyPI, and skips, saying so, when PyPI cannot be reached.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine_fixtures import REPO

INSTALL = REPO / "launch" / "install.sh"
BOOTSTRAP = REPO / "launch" / "pip_bootstrap.sh"


def _version(pip_version_line: str) -> str:
    """'pip 23.2.1 from /path (python 3.11)' -> '23.2.1'."""
    return pip_version_line.split()[1]


def test_install_sh_bootstraps_pip_before_any_other_install():
    lines = INSTALL.read_text().splitlines()
    code = [(i, line.split("#", 1)[0]) for i, line in enumerate(lines)]
    boot = [i for i, line in code if "launch/pip_bootstrap.sh" in line]
    installs = [i for i, line in code if re.search(r"\bpip_q\s+\S|pip install", line) and "pip_q()" not in line]
    activate = [i for i, line in code if ". .venv/bin/activate" in line]
    assert boot and installs and activate, (boot, installs, activate)
    assert activate[0] < boot[0] < installs[0], "pip_bootstrap.sh must run in the venv, before any other install"


def test_pip_bootstrap_upgrades_pip_and_installs_wheel_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    before = _version(subprocess.run([py, "-m", "pip", "--version"], capture_output=True, text=True).stdout)
    assert subprocess.run([py, "-c", "import wheel"], capture_output=True).returncode != 0  # a fresh venv lacks it
    proc = subprocess.run(["bash", str(BOOTSTRAP)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    if "could not upgrade" in proc.stderr:
        pytest.skip(f"PyPI not reachable from here: {proc.stderr.strip().splitlines()[-1]}")
    after = _version(subprocess.run([py, "-m", "pip", "--version"], capture_output=True, text=True).stdout)
    assert subprocess.run([py, "-c", "import wheel"], capture_output=True).returncode == 0, proc.stdout
    assert f"pip {before} -> {after}" in proc.stdout, (before, after, proc.stdout)
    outdated = subprocess.run([py, "-m", "pip", "list", "--outdated", "--format=freeze"], capture_output=True, text=True)
    assert not re.search(r"^pip==", outdated.stdout, flags=re.M), outdated.stdout  # pip is now the newest
    assert Path(venv / "bin" / "pip").is_file()
