from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY_MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*_tiny.yaml"))

WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an which have not "
    "memory state chunk patch attention window document stream byte model token layer norm"
).split()


def write_corpus(root: Path, n_docs: int = 40, seed: int = 0, min_len: int = 300, max_len: int = 3000) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        n = rng.randint(min_len, max_len)
        words, size = [], 0
        while size < n:
            w = rng.choice(WORDS)
            words.append(w)
            size += len(w) + 1
        sub = root / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i:03d}.txt").write_text(" ".join(words)[:n] + "\n")
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Built corpora go to a per-session folder; faiss/torch use few threads on the 2-core box."""
    os.environ["LONGLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # pytest -n N: the cores shared out
    torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // workers))
    yield


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def compose(config_name: str = "train", overrides: list[str] | None = None):
    from experiments.config import compose as compose_config

    return compose_config(config_name, overrides)


def build_net(model: str, overrides: list[str] | None = None):
    from hydra.utils import instantiate

    cfg = compose("train", [f"model={model}", *(overrides or [])])
    return instantiate(cfg.model.net)


def assert_crossbatch_reaches_own_and_next_rows(net, embedding, prev, curr, d, prev_bytes=None, drop_last=False):
    """CrossBatch's dependency structure: the logits of row i depend on the previous-window inputs of
    rows i, i+1, ..., i+d-1 (mod b) only, through gradients to the first output of ``embedding`` (the
    previous windows, recomputed in the same pass). ``prev_bytes``: only that many leading positions of
    the embedded previous windows are checked; ``drop_last``: the last logit of each row is not (a model
    may score it from the next window)."""
    captured = []

    def keep(module, inputs, out):
        out.retain_grad()
        captured.append(out)

    hook = embedding.register_forward_hook(keep)
    logits = net.forward_crossbatch(prev, curr, d)
    hook.remove()
    emb, b = captured[0], curr.shape[0]
    for row in range(b):
        emb.grad = None
        (logits[row, :-1] if drop_last else logits[row]).sum().backward(retain_graph=True)
        reached = emb.grad[:, :prev_bytes].abs().sum((1, 2)) > 0
        expected = torch.zeros(b, dtype=torch.bool)
        expected[[(row + j) % b for j in range(d)]] = True
        assert torch.equal(reached, expected), f"row {row}: contexts {reached.tolist()}"
    return logits
