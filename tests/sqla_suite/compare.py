"""Comparing the bare and the watched run of SQLAlchemy's suite, test id by test id."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.sqla_suite import accepted

ABSENT = "absent"  # the test id did not run in that arm
ISSUE = re.compile(r"issue #\d+")  # every accepted reason names the issue that removes it


def matches(pattern: str, test_id: str) -> bool:
    """Whether ``test_id`` is ``pattern``, where ``*`` stands for any text (and only ``*``:
    test ids have brackets)."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, test_id) is not None


def lookup(table: dict[str, Any], test_id: str) -> Any:
    """The entry of ``table`` whose key matches ``test_id`` (None when none does)."""
    if test_id in table:
        return table[test_id]
    for pattern, value in table.items():
        if "*" in pattern and matches(pattern, test_id):
            return value
    return None


@dataclass
class Difference:
    test_id: str
    bare: str
    watched: str
    reason: str | None  # why it is accepted; None: unexplained


@dataclass
class Verdict:
    """What one backend's comparison found; ``problems`` empty means the gate passes."""

    differences: list[Difference] = field(default_factory=list)
    hook_errors: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # accepted entries that no longer differ

    @property
    def unexplained(self) -> list[Difference]:
        return [d for d in self.differences if d.reason is None]


def compare(
    bare: dict[str, Any],
    watched: dict[str, Any],
    differences: dict[str, str] | None = None,
    hook_errors: dict[str, dict[str, str]] | None = None,
) -> Verdict:
    """Compare two ``--observer-report`` files (the accepted tables default to
    :mod:`tests.sqla_suite.accepted`)."""
    differences = accepted.DIFFERENCES if differences is None else differences
    hook_errors = accepted.HOOK_ERRORS if hook_errors is None else hook_errors
    verdict = Verdict()
    before, after = bare["outcomes"], watched["outcomes"]
    if not before:
        verdict.problems.append("the bare run ran no test")
    for test_id in sorted(before.keys() | after.keys()):
        was, now = before.get(test_id, ABSENT), after.get(test_id, ABSENT)
        if was != now:
            reason = lookup(differences, test_id)
            verdict.differences.append(Difference(test_id, was, now, reason))
    for d in verdict.unexplained:
        verdict.problems.append(f"{d.test_id}: {d.bare} bare, {d.watched} watched")
    differing = {d.test_id for d in verdict.differences}
    for pattern in differences:
        if not any(matches(pattern, test_id) for test_id in differing):
            verdict.stale.append(pattern)
    verdict.problems.extend(watch_problems(watched))
    reasons = list(differences.items())
    reasons += [(p, r) for p, hooks in hook_errors.items() for r in hooks.values()]
    verdict.problems.extend(
        f"accepted entry {p}: the reason names no issue (issue #N)"
        for p, r in reasons
        if not ISSUE.search(r)
    )
    for test_id, errors in sorted(watched.get("hook_errors", {}).items()):
        verdict.hook_errors[test_id] = errors
        allowed = lookup(hook_errors, test_id) or {}
        for hook, count in sorted(errors.items()):
            if hook not in allowed:
                verdict.problems.append(
                    f"{test_id}: observer_hook_errors_total{{hook={hook!r}}} = {count}"
                )
    return verdict


def watch_problems(watched: dict[str, Any]) -> list[str]:
    """Why a watched run does not count as watched, or its harness failed (nothing: fine)."""
    problems = []
    if not watched.get("watched"):
        problems.append("the watched run was not started with --observer-watch")
    elif not watched.get("engines_watched"):
        problems.append("the watched run watched no engine")
    elif not watched.get("checkouts_seen"):
        problems.append("the watched run's Observers counted no checkout")
    elif watched.get("tests_watched", 0) < len(watched["outcomes"]) - _never_set_up(watched):
        problems.append(
            f"only {watched.get('tests_watched', 0)} of {len(watched['outcomes'])} tests "
            "ran with an Observer"
        )
    for test_id, errors in sorted(watched.get("harness_errors", {}).items()):
        problems.extend(f"{test_id}: harness error: {error}" for error in errors)
    return problems


def _never_set_up(report: dict[str, Any]) -> int:
    """Outcomes without a setup phase (collection errors): no Observer could be opened."""
    return sum(outcome == "collect-error" for outcome in report["outcomes"].values())


def counts(report: dict[str, Any]) -> str:
    """``passed=876 skipped=102``: outcomes by kind (not pytest's wording, so that nothing
    mistakes it for the main suite's summary line)."""
    tally = Counter(report["outcomes"].values())
    return " ".join(f"{outcome}={n}" for outcome, n in sorted(tally.items()))
