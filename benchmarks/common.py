"""Timing and memory helpers for the benchmark scripts (wall time, CPU time, peak RSS)."""

from __future__ import annotations

import os
import statistics
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the machine is shared: do not spin idle threads

from experiments.training.bookkeeping import release_free_memory  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond by a thread.

    Memory the allocator keeps after frees (the project's allocator setting, ``experiments.cli.allocator_env``)
    is handed back at entry, so the resident set rises by the working set of what runs inside; without that, an
    op re-using kept memory would read as 0 MB."""

    def __enter__(self):
        release_free_memory()
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss_bytes())
        self.delta_mb = (self.peak - self.base) / 2**20


def measure(fn, repeat: int = 3, warmup: int = 1) -> dict:
    """Median wall and CPU seconds of ``fn()`` over ``repeat`` runs, then the peak extra RSS of one more run
    (apart, so that handing kept memory back to the kernel for the memory figure never costs the timed runs
    their page faults)."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    with PeakRSS() as mem:
        fn()
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "mem_mb": mem.delta_mb}


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; columns are (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---:" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("—" if v is None else (fmt.format(v) if fmt else str(v)))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])
