"""Faults that must lose nothing and report nothing false: pre-emption signals, concurrent writers,
interrupted writes, changed optimiser settings on resume.

* ``RunLock`` — an exclusive lock on a run dir (or a table cell): a second writer fails at once
  with a message naming the holder. The lock is an ``flock`` on ``<dir>/.lock``, so the kernel
  releases it when the holder dies (a kill -9 never leaves a stale lock). Re-entrant in one process.
* ``clean_stale_temp_files`` — leftovers of interrupted atomic writes (``.*.tmp-<pid>``).
* ``Preemption`` — SIGTERM (Lightning's handler) and SIGUSR1 stop training after the current step;
  a resumable checkpoint is written at the signal and the run exits with 128 + the signal number.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

_HELD: dict[str, tuple[int, int]] = {}  # resolved path -> (fd, depth)


class RunLock:
    def __init__(self, folder: str | Path, what: str = "run_dir"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / ".lock"

    def __enter__(self) -> RunLock:
        key = str(self.path.resolve())
        if key in _HELD:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise PermissionError(f"{self.what}={str(self.folder)!r} is not writable; choose a writable "
                                  f"{self.what} (or fix its permissions)") from None
        except OSError as e:
            raise OSError(f"{self.what}={str(self.folder)!r} cannot be used ({e.strerror}); choose another "
                          f"{self.what}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RuntimeError(
                f"{self.what}={str(self.folder)!r} is in use by another process ({holder}); wait for it to "
                f"finish, stop it, or choose another {self.what}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        _HELD[key] = (fd, 1)
        return self

    def __exit__(self, *exc) -> None:
        key = str(self.path.resolve())
        fd, depth = _HELD[key]
        if depth > 1:
            _HELD[key] = (fd, depth - 1)
            return
        del _HELD[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, 0)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
    except (OSError, ValueError):
        return "holder unknown"


def clean_stale_temp_files(folder: str | Path) -> list[Path]:
    """Remove temporary files of interrupted atomic writes below ``folder`` (call while holding its
    lock: no other writer is active, so every one of them is stale)."""
    removed = []
    for p in Path(folder).rglob(".*.tmp-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------- pre-emption
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption(L.Callback):
    """Stop after the current step on SIGTERM or SIGUSR1, write a resumable checkpoint there.

    Lightning's own SIGTERM handler sets ``trainer.received_sigterm`` and raises ``SIGTERMException``
    after the step; SIGUSR1 is routed to the same path. ``on_exception`` (before teardown) saves the
    checkpoint; ``train`` then writes the partial metrics and exits with ``exit_code``."""

    def __init__(self, checkpoint: Path):
        self.checkpoint, self.signum, self._trainer, self._previous = Path(checkpoint), None, None, {}

    def install(self) -> None:
        for s in PREEMPTION_SIGNALS:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handle)

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        if self._trainer is not None:
            self._trainer._signal_connector.received_sigterm = True

    def setup(self, trainer, pl_module, stage) -> None:
        self._trainer = trainer
        if trainer.received_sigterm and self.signum is None:
            self.signum = signal.SIGTERM

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.received_sigterm and self.signum is None:
            self.signum = signal.SIGTERM  # delivered to Lightning's handler (it composes ours after)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, SIGTERMException):
            self.signum = self.signum or signal.SIGTERM
            trainer.save_checkpoint(self.checkpoint, weights_only=False)
            print(f"[longlab] received signal {self.signum}: saved a resumable checkpoint at step "
                  f"{trainer.global_step} -> {self.checkpoint}; resume with ckpt_path=auto", flush=True)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGTERM)
