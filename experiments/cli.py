"""Command lines that fail in one line: ``error: <what> (<value>); <fix>`` and exit status 2.

Every entry point runs through ``hydra_entry`` (the Hydra ones: train, eval, generate, fot_eval) or
``run_cli`` (the argparse ones: compare, run_table, make_table). A user error (a bad value, a missing
file, a config key that does not exist) prints one line; the traceback appears only with ``--debug``
or ``HYDRA_FULL_ERROR=1``. A misspelt key is answered with the nearest existing ones. Lightning's
start-up chatter (accelerator banners, advertisements, deprecation notices) is silenced.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, ImportError, FloatingPointError,
                                                 RuntimeError)
EXIT_USER_ERROR = 2
JEMALLOC = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
            "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")
# glibc: no mmap for large blocks and no trimming, so freed memory is kept and reused instead of being handed
# back to the kernel and faulted in again every step (PyTorch's CPU tuning guides give the same advice)
GLIBC_KEEP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776"


def allocator_env(env: dict | None = None) -> dict:
    """``env`` with an allocator that keeps freed memory: jemalloc without page decay where the system has it,
    else glibc's tunables. ``LONGLAB_ALLOCATOR=off`` leaves the allocator alone."""
    env = dict(os.environ if env is None else env)
    if env.get("LONGLAB_ALLOCATOR") == "off":
        return env
    lib = next((p for p in JEMALLOC if os.path.exists(p)), None)
    if lib:
        env["LD_PRELOAD"] = " ".join(x for x in (env.get("LD_PRELOAD"), lib) if x)
        env["MALLOC_CONF"] = env.get("MALLOC_CONF") or "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    else:
        env["GLIBC_TUNABLES"] = ":".join(x for x in (env.get("GLIBC_TUNABLES"), GLIBC_KEEP) if x)
    env["LONGLAB_ALLOCATOR"] = "jemalloc" if lib else "glibc-keep"
    return env


def with_allocator() -> None:
    """Re-run this command under ``allocator_env`` once (allocator settings are read when a process starts)."""
    if os.environ.get("LONGLAB_ALLOCATOR") or not getattr(sys, "orig_argv", None):
        return
    os.execve(sys.executable, list(sys.orig_argv), allocator_env())


def quiet_lightning() -> None:
    """No advertisement, banner or deprecation notice at start-up; warnings that matter still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.pytorch.trainer.connectors"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*litlogger.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def debugging(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def user_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (*USER_ERRORS, HydraException, OmegaConfBaseException)


def report(e: BaseException, hint: str = "") -> None:
    print(f"error: {one_line(e)}{hint}", file=sys.stderr)
    print("(run with --debug or HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)


def run_cli(main: Callable[[list[str]], object], argv: list[str] | None = None) -> None:
    """Run an argparse entry point with one-line user errors."""
    if argv is None:
        with_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(argv)
    argv = [a for a in argv if a != "--debug"]
    quiet_lightning()
    if debug:
        main(argv)
        return
    try:
        main(argv)
    except user_error_types() as e:
        report(e)
        sys.exit(EXIT_USER_ERROR)


# ---------------------------------------------------------------------------------------------- Hydra entry points
_HYDRA_FLAGS = ("-m", "--multirun", "--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve",
                "--package", "-p", "--shell-completion", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--run", "-r", "--experimental-rerun", "--version")


def suggest(message: str, config_name: str, overrides: list[str]) -> str:
    """' (did you mean optim.lr?)' for a key Hydra could not override."""
    m = re.search(r"Could not override '([^']+)'", message) or re.search(r"Key '([^']+)' is not in struct", message)
    if not m:
        return ""
    bad = m.group(1)
    from omegaconf import OmegaConf

    from experiments.config import compose

    try:
        base = compose(config_name, [o for o in overrides if not o.split("=")[0].lstrip("+~").endswith(bad)])
    except Exception:  # noqa: BLE001 - the suggestion is a courtesy
        return ""
    keys = _dotted_keys(OmegaConf.to_container(base, resolve=False))
    close = difflib.get_close_matches(bad, keys, n=3, cutoff=0.6)
    if not close:
        prefix = bad.rsplit(".", 1)[0] + "."
        close = [k for k in keys if k.startswith(prefix)][:8]
        return f" (keys under {prefix[:-1]}: {', '.join(close)})" if close else ""
    return f" (did you mean {' or '.join(close)}?)"


def _dotted_keys(tree, prefix: str = "") -> list[str]:
    out = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.append(f"{prefix}{k}")
            out += _dotted_keys(v, f"{prefix}{k}.")
    return out


def check_run_dir(cfg, overrides: list[str]) -> None:
    """What Hydra would otherwise fail on with a traceback before any longlab code runs: a required run_dir
    that is missing, or one given that cannot be a folder (Hydra creates it first)."""
    from omegaconf import OmegaConf

    if "run_dir" in cfg.keys() and OmegaConf.is_missing(cfg, "run_dir"):
        raise ValueError("run_dir is required: pass run_dir=<the folder experiments.train wrote>")
    given = [o.split("=", 1)[1].strip("'\"") for o in overrides if o.split("=", 1)[0].lstrip("+~") == "run_dir"]
    if given and given[-1]:
        path = Path(os.path.expanduser(given[-1]))
        if path.exists() and not path.is_dir():
            raise ValueError(f"run_dir={given[-1]!r} is a file, not a folder; choose another run_dir")
        parent = next((p for p in [path, *path.parents] if p.exists()), None)
        if parent is not None and not os.access(parent, os.W_OK):
            raise PermissionError(f"run_dir={given[-1]!r} cannot be created ({parent} is not writable); choose a "
                                  "writable run_dir")


def hydra_entry(config_name: str, task: Callable) -> Callable[[], None]:
    """The ``main()`` of a Hydra entry point: composition and the task fail in one line."""
    import hydra

    from experiments.config import CONFIGS

    def run(cfg) -> None:
        try:
            task(cfg)
        except user_error_types() as e:
            if _debug[0]:
                raise
            report(e)
            sys.exit(EXIT_USER_ERROR)

    _debug = [False]
    wrapped = hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name=config_name)(run)

    def main() -> None:
        with_allocator()
        argv = sys.argv[1:]
        _debug[0] = debugging(argv)
        sys.argv = [sys.argv[0], *[a for a in argv if a != "--debug"]]
        if _debug[0]:
            os.environ["HYDRA_FULL_ERROR"] = "1"
        quiet_lightning()
        overrides = sys.argv[1:]
        if not _debug[0] and not any(a.split("=")[0] in _HYDRA_FLAGS for a in overrides):
            from experiments.config import compose

            try:  # the same composition Hydra is about to do, so that its errors read as one line
                cfg = compose(config_name, overrides)
                check_run_dir(cfg, overrides)
            except user_error_types() as e:
                report(e, suggest(str(e), config_name, overrides))
                sys.exit(EXIT_USER_ERROR)
        wrapped()

    return main
