"""The README's main command: the self-check verifies every capability and says exactly what it verified."""

import re
import sys

from unidense_core import __version__, selfcheck
from unidense_core.cli import main


def test_selfcheck_verifies_every_capability_with_its_numbers(capsys):
    assert main(["selfcheck"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"UniDense {__version__} self-check (torch ")
    assert "RANDOM-weight" in out and not re.search(r"^(FAIL|skip) ", out, re.M)
    for name in selfcheck.CHECKS:  # every capability ran and passed, 3D export included (trimesh is installed)
        assert re.search(rf"^ok   {re.escape(name)} \(\d+\.\d s\)$", out, re.M), name
    n = len(selfcheck.CHECKS)
    assert re.search(rf"^Result: {n} of {n} checks verified, 0 failed, 0 skipped; \d+\.\d s$", out, re.M)
    # The claims of exactness carry their measured number, and it is zero.
    assert "generation after a depth run equals a fresh base model's: max |diff| = 0 over" in out
    assert "one whole-canvas tile equals the untiled UNet: max |diff| = 0\n" in out
    assert "the image latent is kept (max |diff| = 0 over" in out
    assert "two runs equal (max |diff| = 0: no noise, no seed)" in out
    assert "5 UNet calls at t = [801, 601, 401, 201, 1]" in out
    # Ranges that are printed lie where the read-outs promise.
    for lo, hi in re.findall(r"in \[(\d\.\d+), (\d\.\d+)\]", out):
        assert 0 <= float(lo) <= float(hi) <= 1


def test_missing_optional_dependency_is_a_skip_not_a_pass(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "trimesh", None)  # import trimesh now raises ImportError
    assert selfcheck.run(["3D export"]) == 0  # a skip is not a failure...
    out = capsys.readouterr().out
    assert re.search(r"^skip 3D export \(GLB\) \(\d+\.\d s\): .*pip install trimesh", out, re.M)
    assert "ok   3D" not in out  # ...and never reported as verified
    assert "Result: 0 of 1 checks verified, 0 failed, 1 skipped" in out


def test_a_failing_check_is_reported_and_counted(capsys, monkeypatch):
    def broken(workdir):
        raise AssertionError("a property did not hold")

    monkeypatch.setattr(selfcheck, "CHECKS", {"broken capability": broken})
    assert selfcheck.run() == 1
    out = capsys.readouterr().out
    assert "FAIL broken capability" in out and "a property did not hold" in out
    assert "Result: 0 of 1 checks verified, 1 failed, 0 skipped" in out
