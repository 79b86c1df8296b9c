"""The top-level names also exist as unrelated PyPI packages: make sure ours are the ones imported."""

import importlib

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("name", ["architectures", "memory", "kernels", "experiments"])
def test_package_resolves_to_this_repo(name):
    mod = importlib.import_module(name)
    path = (mod.__file__ and __import__("pathlib").Path(mod.__file__).resolve()) or None
    assert path is not None and path.is_relative_to(REPO), f"{name} resolved to {path}, not {REPO}"


def test_architectures_never_import_lightning_or_hydra():
    import ast

    for py in (REPO / "architectures").rglob("*.py"):
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                assert top not in {"lightning", "hydra", "experiments", "pytorch_lightning"}, f"{py} imports {n}"
