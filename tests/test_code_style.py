"""The code stays ruff-clean (the Comfy registry scans for eval/exec/subprocess; pyproject's [tool.ruff] rules)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ruff(*args):
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_is_clean():
    r = ruff("check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_clean():
    r = ruff("format", "--no-cache", "--check", ".")
    assert r.returncode == 0, r.stdout + r.stderr
