"""The needle-offset control: the offsets it asks for are where the pass key's needle lands, each document is
counted under the right cut of the needle by the window boundary, and it refuses what would overwrite."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from experiments.data.tasks import make
from experiments.evaluation import needle_offset
from experiments.evaluation.needle_offset import CUTS, NEEDLE, cut, positions
from tests.conftest import compose


def test_the_grid_depths_sit_at_one_offset_each_and_the_cuts_follow_the_needle():
    # long_context_tasks' grid: one offset per depth at every length (depth 0.25 cuts between the two keys)
    for length in (1024, 4096, 16384, 65536):
        room = length - needle_offset.TAIL - NEEDLE
        offsets = [make("passkey", length, d, 0).needle % 256 for d in (0, 0.25, 0.5, 0.75, 1)]
        assert offsets == [0, 230, 205, 180, 154] and room > 0
    assert [cut(o, 256) for o in (0, 230, 205, 180, 154)] == ["whole", "between the keys", "after key 2", "whole",
                                                              "whole"]
    # "The pass key is " is 16 bytes, the key 5, ". Remember it. " 15: boundary after needle byte b = 256 - offset
    assert [cut(256 - b, 256) for b in (10, 16, 17, 20, 21, 36, 37, 41, 58, 59)] == [
        "before key 1", "before key 1", "inside key 1", "inside key 1", "between the keys", "between the keys",
        "inside key 2", "after key 2", "after key 2", "whole"]


@pytest.mark.parametrize("length,anchor", [(4096, 0.25), (4096, 0.9), (1024, 0.5)])
def test_the_offsets_asked_for_are_where_the_needle_lands(length, anchor):
    pos = positions(length, 256, 4, anchor)
    assert len(pos) > 1 and [at % 256 for _, at in pos] == list(range(0, 4 * len(pos), 4))
    assert all(make("passkey", length, d, s).needle == at for d, at in pos for s in (0, 3))
    assert abs(pos[0][1] - anchor * (length - needle_offset.TAIL - NEEDLE)) < 256


class CutBlind(torch.nn.Module):
    """Predicts every next byte right (it is given the documents), except in documents whose needle the window
    boundary cuts between the two keys: there it answers 0s."""

    max_len = None

    def __init__(self, length, period, anchors, step, samples):
        super().__init__()
        self.config = SimpleNamespace(window=period)
        docs = [make("passkey", length, d, s) for a in anchors for d, _ in positions(length, period, step, a)
                for s in range(samples)]
        self.docs = torch.from_numpy(np.stack([x.tokens for x in docs]).astype(np.int64))
        self.blind = torch.tensor([cut(x.needle % period, period) == "between the keys" for x in docs])
        self.next = 0

    def forward(self, tokens, state=None):
        if state is None:
            state, self.next = (self.next, 0), self.next + tokens.shape[0]
        row, pos = state
        nxt = self.docs[row: row + tokens.shape[0], pos + 1: pos + 1 + tokens.shape[1]].clone()
        nxt = torch.cat([nxt, nxt.new_zeros(nxt.shape[0], tokens.shape[1] - nxt.shape[1])], 1)
        nxt[self.blind[row: row + tokens.shape[0]]] = 0
        return torch.nn.functional.one_hot(nxt, 256).float(), (row, pos + tokens.shape[1])

    def read(self, tokens, state=None):
        return self.forward(tokens, state)[1]


def test_each_document_is_counted_under_its_cut_and_out_is_never_overwritten(tmp_path, monkeypatch):
    length, period, anchors, step, samples = 1024, 64, [0.25, 0.75], 2, 2
    net = CutBlind(length, period, anchors, step, samples)

    def load_run(*args, **kwargs):  # the documents from the first again
        net.next = 0
        return None, SimpleNamespace(net=net)

    monkeypatch.setattr(needle_offset, "load_run", load_run)
    out = tmp_path / "offsets.json"
    args = ["run_dirs=[a_run]", f"length={length}", f"anchors={anchors}", f"step={step}", f"samples={samples}",
            "window=128", f"out={out}"]
    r = needle_offset.run(compose("needle_offset", args))
    assert r["period"] == period and len(r["rows"]) == len(anchors) * period // step
    assert r["by_cut"]["between the keys"]["accuracy"] == 0.0
    assert r["by_cut"]["between the keys"]["documents"] == samples * len(anchors) * 8  # bytes 21-36 before it
    assert all(v["accuracy"] == 1.0 for c, v in r["by_cut"].items() if c != "between the keys")
    assert set(r["by_cut"]) == set(CUTS)  # a 64-byte window: the 59-byte needle is cut at every place
    assert sum(v["documents"] for v in r["by_cut"].values()) == len(r["rows"]) * samples
    saved = json.loads(out.read_text())
    assert saved["rows"] == r["rows"] and "between the keys" in out.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="exists"):
        needle_offset.run(compose("needle_offset", args))
    needle_offset.run(compose("needle_offset", [*args, "overwrite=true"]))
    with pytest.raises(ValueError, match="out=null"):
        needle_offset.run(compose("needle_offset", args[:-1]))
    # a model with neither a window nor a chunk needs the period named
    net.config = SimpleNamespace()
    with pytest.raises(ValueError, match="period="):
        needle_offset.run(compose("needle_offset", [*args, "overwrite=true"]))
    assert needle_offset.run(compose("needle_offset", [*args, "overwrite=true", "period=64"]))["period"] == 64

