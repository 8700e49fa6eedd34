"""Test helpers: scrape a /metrics endpoint into plain data, and wait for a condition."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """GET a Prometheus text exposition: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of one sample, None when absent."""
    return samples.get((name, tuple(sorted(labels.items()))))


def reaches(name: str, minimum: float, **labels: str) -> Callable[[Samples], bool]:
    """A condition for wait_for: the sample exists and is at least ``minimum``."""
    return lambda samples: (value(samples, name, **labels) or 0) >= minimum


def wait_for(
    url: str, condition: Callable[[Samples], bool], timeout: float = 10, what: str = ""
) -> Samples:
    """Scrape until ``condition`` holds; fails with the last scrape after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            shown = {k: v for k, v in samples.items() if not k[0].startswith("pg_stat_activity")}
            raise AssertionError(f"timed out waiting for {what or condition}: {shown}")
        time.sleep(0.05)
