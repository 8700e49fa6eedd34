"""Earlier runs' migration metrics, read back from the textfile or the Pushgateway and added in.

A migration process starts from zero; what it publishes replaces what was there. So that
``increase()`` sees every outcome of every run, the run reads what the previous runs left, once
at its start, and publishes the sum: counters and histograms add up, gauges of revisions this
run did not touch stay, the run's own gauges win.
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Families = dict[str, Metric]
_ADDED = ("counter", "histogram")
# Labels the Pushgateway adds to what it exposes: its own job/instance and the grouping key.
_PUSHGATEWAY_LABELS = ("job", "instance")


def parse(
    exposition: str,
    names: Iterable[str],
    group: Mapping[str, str] | None = None,
    strip: Iterable[str] = (),
) -> Families:
    """The families called ``names`` in a text exposition; with ``group``, only the samples
    whose labels include all of ``group``, those labels and ``strip`` removed."""
    wanted = set(names)
    group = group or {}
    removed = set(group) | set(strip)
    found: Families = {}
    for family in text_string_to_metric_families(exposition):
        if family.name not in wanted:
            continue
        kept = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
            if any(sample.labels.get(k) != v for k, v in group.items()):
                continue
            labels = {k: v for k, v in sample.labels.items() if k not in removed}
            kept.add_sample(sample.name, labels, sample.value)
        if kept.samples:
            found[family.name] = kept
    return found


def read_textfile(path: str, names: Iterable[str]) -> Families:
    """What a previous run wrote to ``path`` (nothing when there is no file yet)."""
    file = Path(path)
    if not file.exists():
        return {}
    return parse(file.read_text(encoding="utf-8"), names)


def read_pushgateway(
    url: str, job: str, grouping_key: Mapping[str, str], names: Iterable[str], timeout: float
) -> Families:
    """What the Pushgateway holds for the group ``job`` + ``grouping_key`` (its ``/metrics``)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    path = parts.path.rstrip("/") + "/metrics"
    request = urllib.request.Request(urlunsplit((parts.scheme, netloc, path, "", "")))
    if parts.username:
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read().decode("utf-8")
    return parse(body, names, {"job": job, **grouping_key}, _PUSHGATEWAY_LABELS)


def merge(current: Iterable[Metric], previous: Families) -> list[Metric]:
    """``current`` families with ``previous`` added: counter and histogram samples summed
    (``_created`` keeps the earliest), previous gauge series the run did not set kept."""
    merged: list[Metric] = []
    for family in current:
        before = previous.get(family.name)
        if before is None or before.type != family.type:
            merged.append(family)
            continue
        theirs = {(s.name, tuple(sorted(s.labels.items()))): s for s in before.samples}
        out = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
            other = theirs.pop((sample.name, tuple(sorted(sample.labels.items()))), None)
            value = sample.value
            if other is not None and family.type in _ADDED:
                if sample.name.endswith("_created"):
                    value = min(value, other.value)
                else:
                    value += other.value
            out.add_sample(sample.name, sample.labels, value)
        for other in theirs.values():
            out.add_sample(other.name, other.labels, other.value)
        merged.append(out)
    return merged
