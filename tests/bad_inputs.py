"""The bad-input tables: one row per (node, input, expected message); every row must raise, quickly and clearly.

A row is ``Case(node, what, call, match)``: ``call()`` runs the node (or the core function behind it) with the bad
input, and must raise ``ValueError``/``FileNotFoundError``/``RuntimeError`` (never a raw IndexError, KeyError,
TypeError or ZeroDivisionError) whose message matches ``match`` (a regex, case-insensitive). A row that returns
instead fails, and so does one that runs longer than ``timeout`` seconds (the alarm interrupts a hang).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CLEAR_ERRORS = (ValueError, FileNotFoundError, RuntimeError, NotImplementedError)


@dataclass
class Case:
    node: str
    what: str
    call: Callable[[], Any]
    match: str
    timeout: float = 60.0

    @property
    def id(self) -> str:
        return f"{self.node}-{self.what}"


class Hang(Exception):
    pass


def run_case(case: Case) -> None:
    def alarm(_sig, _frame):
        raise Hang(f"{case.id}: still running after {case.timeout:.0f} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, case.timeout)
    try:
        result = case.call()
    except CLEAR_ERRORS as exc:
        msg = str(exc)
        assert re.search(case.match, msg, re.I | re.S), f"{case.id}: unclear message: {msg!r}"
        assert "Traceback" not in msg
        return
    except Hang:
        raise
    except Exception as exc:  # a raw exception is a bug: the user needs to know which input and what to do
        raise AssertionError(f"{case.id}: raw {type(exc).__name__}: {exc}") from exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    raise AssertionError(f"{case.id}: no error; returned {type(result).__name__}")
