"""The README's main command: the self-check passes and reports every capability."""

from unidense_core.cli import main


def test_selfcheck_passes(capsys):
    assert main(["selfcheck"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM-weight" in out and "all checks passed" in out and "FAIL" not in out
