"""Read the app workers' metrics from a shared PROMETHEUS_MULTIPROC_DIR; tidy up dead workers."""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import CollectorRegistry

# gauge_liveall_1234.db, gauge_livesum_1234.db, ...: the files mark_process_dead removes.
_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")
log = logging.getLogger("observer.sidecar")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class MultiprocessDirectory:
    """One PROMETHEUS_MULTIPROC_DIR that the app's worker processes write to."""

    def __init__(
        self, path: str, *, prune_dead_workers: bool = False, outside_the_app: bool = False
    ) -> None:
        """``outside_the_app`` (the sidecar): this process may not share the workers' pid
        namespace, so nothing is pruned until one worker pid has been seen alive."""
        if not os.path.isdir(path):
            raise ValueError(
                f"the multiprocess directory {path!r} does not exist; point --multiproc-dir "
                "(or PROMETHEUS_MULTIPROC_DIR) at the directory the app's workers write to"
            )
        self.path = path
        self.prune_dead_workers = prune_dead_workers
        self.pruned = 0
        # Whether a worker pid was ever seen alive: until then, every worker looking dead most
        # likely means another pid namespace, not a dead fleet, and nothing is pruned.
        self.sees_workers = not outside_the_app  # a worker rendering its own server's files
        self._warned_blind = False

    def files(self) -> int:
        """How many .db files the workers left (dead workers' files stay until a wipe)."""
        return len(glob.glob(os.path.join(self.path, "*.db")))

    def prune(self) -> list[int]:
        """``mark_process_dead`` for every pid that has live-gauge files but no process.

        Only meaningful when this process sees the workers' pids (same host or pid namespace).
        """
        pids = {int(m.group(1)) for m in map(_LIVE_FILE.match, os.listdir(self.path)) if m}
        dead = {pid for pid in pids if not pid_alive(pid)}
        if dead != pids:
            self.sees_workers = True
        if not self.sees_workers:
            if dead and not self._warned_blind:
                self._warned_blind = True
                log.warning(
                    "not pruning: none of the %d worker pids in the multiprocess directory is "
                    "visible to the sidecar (another pid namespace?); share the app's pid "
                    'namespace (compose: pid: "service:app") or pass --no-prune-dead-workers',
                    len(pids),
                )
            return []
        for pid in sorted(dead):
            mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]
        self.pruned += len(dead)
        return sorted(dead)

    def register(self, registry: CollectorRegistry) -> None:
        """Add the workers' aggregated metrics (and this directory's own) to a fresh registry."""
        if self.prune_dead_workers:
            self.prune()
        MultiProcessCollector(registry, path=self.path)  # type: ignore[no-untyped-call]
        registry.register(_DirectoryCollector(self))


class _DirectoryCollector:
    def __init__(self, directory: MultiprocessDirectory) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "observer_sidecar_multiproc_files",
            "Files in PROMETHEUS_MULTIPROC_DIR; many slow every scrape (wipe it at app start).",
            self.directory.files(),
        )
        yield CounterMetricFamily(
            "observer_sidecar_dead_workers_pruned",
            "Dead worker pids whose live gauges the sidecar removed (mark_process_dead).",
            self.directory.pruned,
        )
