"""Timing and memory helpers for the benchmark scripts (wall time, CPU time, peak RSS)."""

from __future__ import annotations

import os
import statistics
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the machine is shared: do not spin idle threads


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond by a thread.

    Large tensors are mmapped by the allocator and returned to the OS when freed, so RSS tracks the
    live working set of an op on CPU."""

    def __enter__(self):
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
    """Median wall and CPU seconds of ``fn()`` over ``repeat`` runs, and the peak extra RSS."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    with PeakRSS() as mem:
        for _ in range(repeat):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
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
