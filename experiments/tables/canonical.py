"""What of a composed training config a cell's key counts: run paths, seeds and display switches are left out,
options added after cells were keyed are left out at their neutral values, and classes that moved keep the
name they were keyed with, so that reorganising the code or adding an option never orphans finished work."""

from __future__ import annotations

from experiments.training.crossbatch import CrossBatchConfig

# values that never change what a cell computes
IGNORED_KEYS = ("run_dir", "seed", "ckpt_path", "init_from", "trainer.enable_progress_bar", "data.cache_dir",
                "callbacks.checkpoint.enable_version_counter")
# config keys added after cells were keyed, with the value that reproduces the behaviour from before
# they existed: at that value a key is left out of the hash, so adding a neutral option never orphans
# finished cells (any other value changes the key). Append here whenever a config gains a key.
NEUTRAL_ADDITIONS: dict[str, object] = {
    "data.source": "auto", "data.text_field": "text", "data.doc_separator": None, "data.block_bytes": None,
    "data.split_bytes": None, "data.hf_name": None, "data.hf_config": None,
    "model.net.attention_dropout_mode": "post_softmax", "model.net.checkpoint_layers": False,
    "data.loss_on": "all", "parallel.sequence": 1, "data.segment_len": None, "data.skip_unreadable": False,
    "overwrite": False, "task.crossbatch.score_previous": False, "data.tokenizer": "bytes",
    "task.crossbatch.detach_previous": False, "compile": False,
    "data.bpe_vocab_size": 4096,
}
# classes that moved to another module (a ``_target_`` says where code lives, not what a cell computes): the
# name a key was computed with, so that reorganising the code never orphans finished cells
MOVED_TARGETS: dict[str, str] = {
    "experiments.training.loggers.ResumableCSVLogger": "experiments.loggers.ResumableCSVLogger",
    "experiments.training.parallel.block_classes": "experiments.parallel.block_classes",
}
# the same for fields an architecture's config gained (at their defaults), by the net's _target_
_MEMORY_DEFAULTS: dict[str, object] = {
    "memory_layers": [], "memory_backend": "exact", "memory_index": "flat", "memory_capacity": 65536,
    "memory_k": 128, "memory_nlist": 64, "memory_nprobe": 8, "memory_hnsw_m": 32, "memory_ef_search": 64,
    "memory_threads": 1,
}
NEUTRAL_NET_ADDITIONS: dict[str, dict[str, object]] = {
    "architectures.megalodon.Megalodon": _MEMORY_DEFAULTS,
    "architectures.megabyte.Megabyte": {**_MEMORY_DEFAULTS, "global_window": 0},
    "architectures.fot.FocusedTransformer": {"qk_norm": "memory"},
}
_MISSING = object()


def dotted(tree: dict, key: str, default=None):
    """``tree["a"]["b"]`` for the key ``a.b``, or ``default`` where the path ends early."""
    for p in key.split("."):
        if not isinstance(tree, dict) or p not in tree:
            return default
        tree = tree[p]
    return tree


def drop(tree: dict, key: str) -> None:
    """Remove the dotted ``key`` from ``tree``, and any parent it leaves empty (a group that only held it)."""
    *parents, last = key.split(".")
    path = [tree]
    for p in parents:
        node = path[-1].get(p) if isinstance(path[-1], dict) else None
        if node is None:
            return
        path.append(node)
    if not isinstance(path[-1], dict):
        return
    path[-1].pop(last, None)
    for node, key in zip(reversed(path[:-1]), reversed(parents)):
        if node.get(key) == {}:
            node.pop(key)


def _unmove_targets(tree) -> None:
    if isinstance(tree, dict):
        if tree.get("_target_") in MOVED_TARGETS:
            tree["_target_"] = MOVED_TARGETS[tree["_target_"]]
        for v in tree.values():
            _unmove_targets(v)
    elif isinstance(tree, list):
        for v in tree:
            _unmove_targets(v)


def canonical(tree: dict) -> dict:
    """``tree`` (a plain composed config, changed in place) as its key hashes it."""
    data = tree.get("data") or {}
    if "pattern" in data and data["pattern"] is None and "path" in data:  # the pattern that applies
        data["pattern"] = "**/*.py" if data["path"] is None else "**/*"
    for k in IGNORED_KEYS:
        drop(tree, k)
    _unmove_targets(tree)
    crossbatch = (tree.get("task") or {}).get("crossbatch")
    if isinstance(crossbatch, dict):  # a default that changes training must change the key: spell it out
        crossbatch.setdefault("score_previous", CrossBatchConfig.score_previous)
    if set(tree.get("logger") or {}) == {"csv"}:  # loggers became a dict of loggers: the CSV one alone keys as before
        tree["logger"] = tree["logger"]["csv"]
    neutral_net = NEUTRAL_NET_ADDITIONS.get(str(dotted(tree, "model.net._target_")), {})
    for k, neutral in [*NEUTRAL_ADDITIONS.items(), *((f"model.net.{f}", v) for f, v in neutral_net.items())]:
        if dotted(tree, k, _MISSING) == neutral:
            drop(tree, k)
    return tree
