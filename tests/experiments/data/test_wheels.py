"""data=packages from pinned pure-Python wheels: the same text on every machine, whatever is installed."""

from __future__ import annotations

import subprocess
import zipfile

import pytest

from experiments.data import ByteCorpus
from experiments.data.sources import Report
from experiments.data.wheels import fetch, parse_pins, wheel_documents


def make_wheel(folder, name, version, files, tag="py3-none-any"):
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
    return wheel


FILES = {"alpha/__init__.py": "from .core import thing\n", "alpha/core.py": "def thing():\n    return 1\n",
         "alpha/sub/b.py": "x = 2", "alpha/data.json": "{}", "top.py": "import alpha\n"}


def no_download(*args, **kwargs):
    raise AssertionError("a cached wheel was downloaded again")


def test_wheel_documents_are_package_folders_with_installed_ids(tmp_path):
    wheel = make_wheel(tmp_path / "wheels", "alpha", "1.0", FILES)
    docs = {d.id: d.read() for d in wheel_documents([wheel], Report())}
    assert docs == {"site-packages": b"import alpha\n",
                    "site-packages/alpha": b"from .core import thing\ndef thing():\n    return 1\n",
                    "site-packages/alpha/sub": b"x = 2\n"}  # no metadata, no data files, a newline added


def test_pins_must_be_exact(tmp_path):
    assert parse_pins(["Foo.Bar==1.2", "baz_qux==0.1.post1"]) == [("foo_bar", "1.2"), ("baz_qux", "0.1.post1")]
    for bad in (["foo>=1"], ["foo"], ["foo==1", "Foo==2"]):
        with pytest.raises(ValueError, match=r"data.distributions"):
            parse_pins(bad)


def test_a_cached_wheel_is_used_and_a_platform_wheel_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", no_download)
    wheel = make_wheel(tmp_path / "wheels", "alpha", "1.0", FILES)
    assert fetch(["Alpha==1.0"], tmp_path) == [wheel]
    make_wheel(tmp_path / "wheels", "beta", "2.0", FILES, tag="cp311-cp311-manylinux_2_17_x86_64")
    with pytest.raises(ValueError, match=r"beta-2.0-cp311.*not none-any.*pure-Python wheel"):
        fetch(["beta==2.0"], tmp_path)


def test_a_wheel_that_cannot_be_downloaded_names_the_distribution_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: No matching distribution found for gamma==9.9"))
    with pytest.raises(RuntimeError, match=r"could not download gamma==9.9 \(ERROR: No matching distribution.*"
                                           r"put its wheel in .*wheels"):
        fetch(["gamma==9.9"], tmp_path)
    assert not list((tmp_path / "wheels").iterdir())  # nothing half-downloaded left behind


def test_the_pinned_corpus_is_the_stdlib_and_the_wheels_whatever_is_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", no_download)
    make_wheel(tmp_path / "wheels", "alpha", "1.0", FILES)
    c = ByteCorpus.build_or_load(source="packages", name="pinned", cache_dir=tmp_path, distributions=["alpha==1.0"],
                                 val_fraction=0.05, test_fraction=0.4)
    ids = [p for s in ("train", "val", "test") for p in c.split(s).paths]
    site = sorted(p for p in ids if p.startswith("site-packages"))
    assert site == ["site-packages", "site-packages/alpha", "site-packages/alpha/sub"]  # nothing installed
    assert any(p.startswith("stdlib/") for p in ids) and c.meta["source"]["distributions"] == ["alpha==1.0"]
    assert "corpus pinned: the standard library and 1 pinned wheel (packages)" in capsys.readouterr().out
    again = ByteCorpus.build_or_load(source="packages", name="pinned", cache_dir=tmp_path,
                                     distributions=["alpha==1.0"], val_fraction=0.05, test_fraction=0.4)
    assert again.folder == c.folder  # cached: no download, no rebuild
    with pytest.raises(ValueError, match=r"data.distributions pins the wheels of data.source=packages"):
        ByteCorpus.build_or_load(path=str(tmp_path), source="files", cache_dir=tmp_path, distributions=["a==1"])


def test_the_packages_preset_pins_every_distribution_exactly():
    from tests.conftest import compose

    cfg = compose("train", ["data=packages"])
    pins = parse_pins(cfg.data.distributions)
    assert len(pins) >= 40 and cfg.data.source == "packages"
