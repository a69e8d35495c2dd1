"""The benchmarks' verdicts: each ratio printed beside its goal, with PASS or MISS.

    print(goal_line("preparation / tokenizing alone", 1.43, "<=", 1.5))
    # preparation / tokenizing alone: 1.43 (goal <= 1.5) PASS

The value is compared as printed (rounded to ``digits``), so the line never shows a number that meets
its goal beside MISS. A ratio the benchmark reports for information has no goal: :func:`info_line`.
"""
import operator

COMPARE = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


def verdict(value: float, op: str, goal: float, digits: int = 2) -> str:
    """PASS if ``value``, rounded to ``digits``, meets ``op goal``; else MISS."""
    return "PASS" if COMPARE[op](round(value, digits), goal) else "MISS"


def goal_line(what: str, value: float, op: str, goal: float, digits: int = 2, note: str = "") -> str:
    """``what: value (goal op goal) PASS|MISS``, with ``note`` after it."""
    return f"{what}: {value:.{digits}f} (goal {op} {goal:g}) {verdict(value, op, goal, digits)}{note}"


def info_line(what: str, value: float, why: str, digits: int = 2) -> str:
    """``what: value (no goal: why)``."""
    return f"{what}: {value:.{digits}f} (no goal: {why})"
