"""lm-evaluation-harness on any longlab run: ``LonglabLM`` (registered with ``lm_eval`` as ``longlab``) answers
the harness's three request types with the run's own model and tokenizer (bytes, or the tokenizer it trained
with), reading long inputs window by window with the model's carried state, as streaming evaluation does.

    python -m experiments.harness --run_dir runs/m --tasks lambada_openai --limit 100
    python -m experiments.harness --run_dir runs/m --tasks my_task --include_path my_tasks/   # local task YAMLs

* ``loglikelihood(context, continuation)``: the log-probability of the continuation's tokens after the
  context, and whether each was the greedy choice;
* ``loglikelihood_rolling(text)``: the text's total log-probability (every token after a newline that
  stands for the start of a document);
* ``generate_until(context, {until, max_gen_toks})``: greedy continuation, cut before the first stop string.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.data.files import optional_module
from experiments.data.tokens import id_bytes
from experiments.evaluation.generation import generate, run_tokenizer
from experiments.training.runs import load_run, pick_device

lm_eval = optional_module("lm_eval", "experiments.harness")
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402

START = "\n"  # what a request with an empty context is conditioned on (the harness's EOT, for a byte model)


@register_model("longlab")
class LonglabLM(LM):
    def __init__(self, run_dir: str, device: str = "auto", window: int | None = None, **kwargs):
        super().__init__()
        self._device = pick_device(device)
        cfg, module = load_run(run_dir, device=self._device)
        self.net, self.run_dir = module.net, str(run_dir)
        self.window = int(window or cfg.data.seq_len)
        self.tok = run_tokenizer(run_dir)
        self.id_bytes = None if self.tok is None else id_bytes(self.tok)

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8")) if self.tok is None else self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        raw = bytes(ids) if self.id_bytes is None else b"".join(self.id_bytes[i] for i in ids)
        return raw.decode("utf-8", errors="replace")

    @torch.no_grad()
    def score(self, ids: list[int], first: int) -> tuple[float, bool]:
        """Sum of log-probabilities of ``ids[first:]`` given everything before them, and whether every one was
        the argmax; read window by window with the model's state (a model with ``max_len`` keeps the last
        ``max_len`` ids)."""
        limit = self.net.max_len
        if limit is not None and len(ids) > limit:
            cut = len(ids) - limit
            ids, first = ids[cut:], max(1, first - cut)
        x = torch.tensor([ids], dtype=torch.long, device=self._device)
        inputs, targets = x[:, :-1], x[:, 1:]
        total, greedy, state = 0.0, True, None
        for s in range(0, inputs.shape[1], self.window):
            e = min(s + self.window, inputs.shape[1])
            lo = max(s, first - 1)
            if lo >= e:  # context only: its state (``read`` may skip work)
                state = self.net.read(inputs[:, s:e], state)
                continue
            logits, state = self.net(inputs[:, s:e], state)
            logp = F.log_softmax(logits[0, lo - s:].float(), -1)
            t = targets[0, lo:e]
            total += float(logp.gather(-1, t[:, None]).sum())
            greedy = greedy and bool((logp.argmax(-1) == t).all())
        return total, greedy

    # ------------------------------------------------------------------ the harness's requests
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for context, continuation in (r.args for r in requests):
            ctx = self.encode(context) or self.encode(START)
            out.append(self.score(ctx + self.encode(continuation), len(ctx)))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        start = self.encode(START)
        return [self.score(start + self.encode(r.args[0]), len(start))[0] for r in requests]

    def generate_until(self, requests) -> list[str]:
        out = []
        for context, kwargs in (r.args for r in requests):
            until = [u for u in (kwargs.get("until") or []) if u]
            prompt = self.encode(context) or self.encode(START)
            ids = generate(self.net, torch.tensor([prompt], device=self._device), int(kwargs.get("max_gen_toks", 64)),
                           temperature=0.0, stop=[u.encode("utf-8") for u in until], id_bytes=self.id_bytes)
            text = self.decode(ids[0, len(prompt):].tolist())
            cuts = [text.find(u) for u in until if u in text]
            out.append(text[: min(cuts)] if cuts else text)
        return out


def run(run_dir: str, tasks: list[str], include_path: str | None = None, limit: int | None = None,
        device: str = "auto", out: str | None = "harness.json") -> dict:
    """``lm_eval.simple_evaluate`` on the run; the results (per task, per metric) go to ``<run_dir>/<out>``."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model = LonglabLM(run_dir, device)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm_eval knows no task {unknown}; give --include_path for your own task YAMLs (known "
                         f"tasks: {len(manager.all_tasks)}, e.g. {sorted(manager.all_tasks)[:5]})")
    result = simple_evaluate(model=model, tasks=list(tasks), task_manager=manager, limit=limit)
    summary = {"run_dir": run_dir, "tasks": list(tasks), "limit": limit, "results": result["results"]}
    for task, metrics in result["results"].items():
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.endswith("stderr,none")}
        print(f"[longlab] {task}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    if out:
        Path(run_dir, out).write_text(json.dumps(summary, indent=2, default=str))
    return summary


__all__ = ["LonglabLM", "run"]
