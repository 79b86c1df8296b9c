"""The C++ kernels' build (``kernels.cpu_build``): a build lock left by a process that died while building is
removed, with a message, instead of making every later run wait on it forever; a live build's lock is waited
for."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from kernels import cpu_build


def old_lock(build, age_s):
    build.mkdir(parents=True, exist_ok=True)
    lock = build / "lock"
    lock.touch()
    t = time.time() - age_s
    os.utime(lock, (t, t))
    return lock


def test_a_stale_lock_is_removed_and_said(tmp_path, capsys):
    lock = old_lock(tmp_path / "b", 2 * cpu_build.STALE_LOCK_S)
    cpu_build.clear_stale_lock("op", tmp_path / "b")
    assert not lock.exists()
    assert "removing a build lock left 20 min ago" in capsys.readouterr().err


def test_a_fresh_lock_is_waited_for_then_removed_when_it_goes_stale(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cpu_build, "STALE_LOCK_S", 0.4)
    lock = old_lock(tmp_path / "b", 0.0)
    t0 = time.time()
    cpu_build.clear_stale_lock("op", tmp_path / "b")
    assert not lock.exists() and time.time() - t0 >= 0.3
    err = capsys.readouterr().err
    assert "waiting for another process's build" in err and "removing a build lock" in err


def test_no_lock_no_wait(tmp_path, capsys):
    (tmp_path / "b").mkdir()
    cpu_build.clear_stale_lock("op", tmp_path / "b")
    assert capsys.readouterr().err == ""


def test_load_clears_a_stale_lock_before_torch_waits_on_it(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    if not cpu_build.enabled():
        pytest.skip(f"{cpu_build.ENV_VAR}=0")
    source = tmp_path / "k.cpp"
    source.write_text("// a kernel\n")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    name = f"p_{cpu_build.cpu_tag()}_{hashlib.sha256(source.read_bytes()).hexdigest()[:8]}"
    lock = old_lock(tmp_path / "ext" / name, 2 * cpu_build.STALE_LOCK_S)
    seen = []
    monkeypatch.setattr(cpp_extension, "load", lambda name, *a, **k: seen.append((name, lock.exists())) or "module")
    assert cpu_build.load("op", "p", source) == "module"
    assert seen == [(name, False)]
