"""What a run refuses before it starts: values that would make it meaningless, a run_dir whose finished
run it would replace unasked, and a resume on other text than the run trained on."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from experiments.config import integer, write_json
from experiments.data.identity import INSTALLED, describe_identity, same_content


def sequence_parallel(cfg: DictConfig) -> int:
    """``parallel.sequence``: the ranks that split each sequence (1: no chunk parallelism)."""
    return int((cfg.get("parallel") or {}).get("sequence", 1))


def check_run_config(cfg: DictConfig) -> None:
    """Values that would make a run meaningless, refused before anything is built."""
    steps = cfg.trainer.get("max_steps")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"trainer.max_steps={steps!r} must be an integer >= 1 (the training stream is endless)")
    integer(cfg.get("seed"), "seed", 0)
    t = cfg.trainer
    integer(t.get("accumulate_grad_batches", 1), "trainer.accumulate_grad_batches")
    integer(t.get("log_every_n_steps", 1), "trainer.log_every_n_steps")
    every = t.get("val_check_interval")
    if not (isinstance(every, int) and not isinstance(every, bool) and every >= 1):
        raise ValueError(f"trainer.val_check_interval={every!r} must be a number of steps >= 1 (the training stream "
                         "is endless: validation runs every that many steps)")
    clip = t.get("gradient_clip_val")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0):
        raise ValueError(f"trainer.gradient_clip_val={clip!r} must be a number >= 0 (0 or null: no clipping)")
    if "FSDPStrategy" in str((t.get("strategy") or {}).get("_target_", "") if OmegaConf.is_dict(t.get("strategy"))
                             else "") and not torch.cuda.is_available():
        raise ValueError("trainer=fsdp shards models over GPUs and this machine has none; use trainer=ddp "
                         "(one process per CPU device) or trainer=cpu")
    warmup = int(cfg.optim.warmup_steps)
    if warmup > (cfg.optim.get("max_steps") or steps):  # as every framework does: say so and run
        print(f"[longlab] warning: optim.warmup_steps={warmup} is longer than the run "
              f"({cfg.optim.get('max_steps') or steps} steps): the learning rate never reaches optim.lr="
              f"{cfg.optim.lr} (it stops at {steps / max(warmup, 1):.0%} of it); lower optim.warmup_steps if that "
              "is not what you want", flush=True)
    n = sequence_parallel(cfg)
    if n < 1:
        raise ValueError(f"parallel.sequence={n} must be an integer >= 1 (the ranks that split each sequence)")
    if n > 1:
        seq_len = int(cfg.data.get("seq_len") or 0)
        if seq_len % n:
            raise ValueError(f"data.seq_len={seq_len} must be a multiple of parallel.sequence={n} (one span per rank)")
        if cfg.data.get("sample_len"):
            raise ValueError(f"parallel.sequence={n} splits each row of data.seq_len bytes; data.sample_len="
                             f"{cfg.data.sample_len} cuts samples into rows first: leave data.sample_len unset")


def refuse_to_overwrite(run_dir: Path, overwrite: bool) -> None:
    """A fresh start in a folder that holds a run (its metrics or a checkpoint) would replace it: refused
    unless ``overwrite=true``."""
    held = [p.name for p in (run_dir / "metrics.json", run_dir / "checkpoints") if p.exists() and
            (p.is_file() or any(p.glob("*.ckpt")))]
    if held and overwrite:
        print(f"[longlab] overwrite=true: starting {run_dir} over (its metrics and checkpoints are removed)",
              flush=True)
        (run_dir / "metrics.json").unlink(missing_ok=True)
        for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
            ckpt.unlink()
    elif held:
        status = (read_json_quietly(run_dir / "metrics.json") or {})
        what = f"a {status.get('status', 'started')} run of {status.get('steps', '?')} steps" if status else "a run"
        raise ValueError(f"run_dir={str(run_dir)!r} already holds {what} ({', '.join(held)}); resume it with "
                         "ckpt_path=auto, choose another run_dir, or start it over with overwrite=true")


def read_json_quietly(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_corpus(run_dir: Path, corpus, overwrite: bool) -> None:
    """A run folder belongs to the corpus it trained on: the first start writes ``corpus.json`` (folder,
    content hash, documents per split); a resume, or a second start of the same folder, on a corpus with other
    content (the same options, other sources: ``data=packages`` where other packages are installed) stops,
    naming both, instead of training on other text without a word. ``overwrite=true`` starts over (recorded
    anew). ``corpus`` None: generated data (nothing to record)."""
    if corpus is None:
        return
    here, f = corpus.identity(), run_dir / "corpus.json"
    was = read_json_quietly(f)
    if was and not overwrite and not same_content(was, here):
        raise ValueError(f"{run_dir} trained on {describe_identity(was)}, but the corpus built here from the same "
                         f"data options is {describe_identity(here)}: its sources differ on this machine "
                         f"({INSTALLED}); run it where they match, or start it over with overwrite=true")
    if was != here:
        write_json(f, here)
