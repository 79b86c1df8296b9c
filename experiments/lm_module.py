"""One LightningModule that trains any architecture honouring the house contract
(``architectures.contract``)."""

from __future__ import annotations

import math
import resource
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from architectures.common import detach_state, from_serializable, map_state, to_serializable
from architectures.contract import LanguageModel, check
from experiments.config import build, optim_config, to_plain
from experiments.crossbatch import CrossBatch
from experiments.metrics import Accuracy, BitsPerByte, MeanNLL, Perplexity
from experiments.parallel import group_total, receive_state, send_state, sequence_group, span_batch


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak GPU memory allocated (CUDA) or the process's peak resident set size (CPU), in MiB, since the
    last ``reset_peak_memory``."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory(device: torch.device | None = None) -> bool:
    """Start a new peak for ``peak_memory_mb``, so that a run in a process that ran others before (a table
    trains its cells one after another) reports its own peak, not the process's. On CPU this resets the
    resident-set high-water mark (Linux ``/proc/self/clear_refs``); returns False where that is not
    possible (the peak is then the process's)."""
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def lr_lambda(warmup_steps: int, max_steps: int, min_lr_ratio: float, schedule: str = "cosine",
              power: float = 1.0):
    """Linear warm-up to 1, then ``schedule`` (cosine | polynomial | constant) down to ``min_lr_ratio``
    at ``max_steps``."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if max_steps <= warmup_steps or schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else (1 - progress) ** power
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return f


def forward_documents(net: LanguageModel, inputs: torch.Tensor, state: Any, starts: torch.Tensor | None):
    """``net(inputs, state)`` that respects document boundaries: ``starts`` [B, T] marks the inputs that
    begin a document; the window is cut at every such position (of any row) and the rows that start
    there get ``net.reset_state`` first. Segment by segment equals one forward for the other rows
    (the contract), so the cuts change nothing else. Returns (logits, state, number of resets)."""
    if starts is None or not bool(starts.any()):
        logits, state = net(inputs, state)
        return logits, state, 0
    cols = starts.any(0).nonzero().flatten().tolist()
    edges = sorted({0, *cols, inputs.shape[1]})
    outs, resets = [], 0
    for a, b in zip(edges[:-1], edges[1:]):
        rows = starts[:, a]
        if state is not None and bool(rows.any()):
            state = net.reset_state(state, rows)
            resets += int(rows.sum())
        out, state = net(inputs[:, a:b], state)
        outs.append(out)
    return torch.cat(outs, 1), state, resets


class CausalLMModule(L.LightningModule):
    """Next-byte cross-entropy for ``net(tokens, state) -> (logits, state)``.

    ``net`` is a Hydra config (``cfg.model.net``) instantiated here, so hparams hold only plain dicts.
    With ``carry_state`` the module keeps the net's state between training steps (the data must be
    the document-stream sampler so that consecutive batches are consecutive text) and detaches it
    after every step: truncated back-propagation through time. A batch from the document-stream
    sampler marks where documents start (``starts`` [B, T+1]): the window is cut there and those rows
    are reset (``reset_state``), and the first byte of a document is not scored (nothing precedes it).
    ``crossbatch`` (FoT) selects the CrossBatch objective (``experiments.crossbatch``). A batch may
    carry ``loss_mask`` [B, T] (targets that count).
    """

    def __init__(
        self,
        net: dict,
        optim: dict | None = None,
        carry_state: bool = False,
        ignore_index: int = -100,
        crossbatch: dict | None = None,
        sequence_parallel: int = 1,
    ):
        super().__init__()
        if sequence_parallel > 1 and (carry_state or crossbatch):
            raise ValueError(f"parallel.sequence={sequence_parallel} splits each sequence across ranks; it cannot "
                             "be combined with task.carry_state or task.crossbatch")
        self.sequence_parallel = int(sequence_parallel)
        net, optim, crossbatch = to_plain(net), to_plain(optim) or {}, to_plain(crossbatch) or None
        self.save_hyperparameters({"net": net, "optim": optim, "carry_state": carry_state,
                                   "ignore_index": ignore_index, "crossbatch": crossbatch,
                                   "sequence_parallel": int(sequence_parallel)})
        self.net: LanguageModel = check(build(net))
        self.optim_cfg = optim_config(optim)
        self.crossbatch = CrossBatch(self.net, crossbatch) if crossbatch else None
        self.carry_state = carry_state
        self.ignore_index = ignore_index
        self.train_loss, self.train_bpb, self.train_acc = MeanNLL(), BitsPerByte(), Accuracy()
        self.val_loss, self.val_bpb, self.val_ppl, self.val_acc = MeanNLL(), BitsPerByte(), Perplexity(), Accuracy()
        self._state = None
        self._t_last: float | None = None
        self._tokens_timed = 0
        self._time_timed = 0.0
        self._cpu_timed = 0.0
        self.tokens_seen = 0
        self._wall_before = 0.0
        self.resume_optim_changes: list[str] = []  # set by train when resuming with other optim values
        self.resets = 0  # document starts inside carried or streamed windows, where reset_state ran

    @property
    def cb_d(self) -> int | None:
        return None if self.crossbatch is None else self.crossbatch.d

    # ------------------------------------------------------------------ forward and loss
    def nll(self, batch: dict[str, torch.Tensor], state=None, crossbatch: bool = True):
        """Per-byte NLL [B, T] in nats, the mask of scored bytes, the new state, and top-1 hits."""
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        mask, starts = self.scored(batch)
        if crossbatch and self.crossbatch is not None:
            logits, scored = self.crossbatch.logits(inputs)
            targets, mask = targets[:, scored], mask[:, scored]
        else:
            logits, state, resets = forward_documents(
                self.net, inputs, state, None if starts is None else starts[:, :-1].to(inputs.device))
            self.resets += resets
        nll = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=self.ignore_index, reduction="none"
        ).view_as(targets)
        hits = logits.argmax(-1) == targets
        return nll, mask, state, hits

    def scored(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The targets a batch scores (bool [B, T]: its loss mask, no byte that starts a document, no
        ignore_index) and the document starts [B, T + 1] (None when the sampler gives none)."""
        tokens = batch["tokens"]
        targets = tokens[:, 1:]
        mask = batch.get("loss_mask")
        mask = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask.bool()
        starts = batch.get("starts")
        if starts is None and "doc_start" in batch:  # samplers that only mark a start at the window's beginning
            starts = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
            starts[:, 0] = batch["doc_start"].to(tokens.device)
        if starts is not None:
            mask = mask & ~starts[:, 1:].to(mask.device)
        return mask & (targets != self.ignore_index), starts

    def training_step(self, batch, batch_idx):
        state = self._state if self.carry_state else None
        group = None
        if self.sequence_parallel > 1:  # this rank's span; the group's scored targets; the previous rank's state
            group = sequence_group(self.global_rank, self.trainer.world_size, self.sequence_parallel)
            batch = span_batch(batch, group)
            total = group_total(self.scored(batch)[0].sum().float(), group)  # every rank, before the chain
            state, link = receive_state(group, self.device)
        nll, mask, state, hits = self.nll(batch, state)
        # mean over scored targets; a batch without any (e.g. a window of definitions only) gives 0
        loss = (nll * mask).sum() / mask.sum().clamp(min=1)
        if group is not None:  # DDP's average of these is the whole sequence's mean; the state goes on
            loss = (nll * mask).sum() / total.clamp(min=1) * group.size
            loss = loss + link + send_state(state, group).to(loss.device)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step} "
                f"(lr={self._current_lr():.3g}); lower optim.lr, raise optim.warmup_steps, keep "
                "trainer.gradient_clip_val set, or train in float32 (trainer.precision=32-true)"
            )
        if self.carry_state:
            self._state = detach_state(state)
        self.train_loss.update(nll, mask)
        self.train_bpb.update(nll, mask)
        self.train_acc.update(hits, mask)
        world = self.trainer.world_size if self._trainer is not None else 1
        n = batch["tokens"][:, :-1].numel() * world  # input tokens processed (the budget), all ranks
        self.tokens_seen += n
        self._tokens_in_step = n
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        if (self.global_step + 1) % every == 0:
            if self.train_loss.count > 0:  # steps without scored targets log no loss
                self.log("train/loss", self.train_loss.compute(), prog_bar=True)
                self.log("train/bpb", self.train_bpb.compute(), prog_bar=True)
                acc = self.train_acc.compute()
                self.log("train/acc", acc)
                if self.crossbatch is not None:
                    batch_size = self.trainer.datamodule.batch_size if self._trainer else 10**9
                    self.crossbatch.maybe_switch({"train/acc": float(acc),
                                                  "train/loss": float(self.train_loss.compute())}, batch_size)
            if self.crossbatch is not None:
                self.log("train/crossbatch_d", float(self.crossbatch.d))
            for m in (self.train_loss, self.train_bpb, self.train_acc):
                m.reset()
            self.log("train/lr", self._current_lr())
            if self._time_timed > 0:
                self.log("train/tokens_per_s", self._tokens_timed / self._time_timed, prog_bar=True)
            self.log("train/peak_mem_mb", peak_memory_mb(self.device))
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        self._t_last, self._c_last = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self._t_last is not None and self.global_step > 1:  # skip warm-up steps
            self._time_timed += time.perf_counter() - self._t_last
            self._cpu_timed += time.process_time() - self._c_last
            self._tokens_timed += self._tokens_in_step

    @property
    def tokens_per_s(self) -> float:
        return self._tokens_timed / self._time_timed if self._time_timed > 0 else float("nan")

    @property
    def tokens_per_cpu_s(self) -> float:
        """Tokens per second of this process's CPU time (all its threads): less sensitive than wall time
        to other jobs sharing the machine."""
        return self._tokens_timed / self._cpu_timed if self._cpu_timed > 0 else float("nan")

    def validation_step(self, batch, batch_idx):
        nll, mask, _, hits = self.nll(batch)
        for m in (self.val_loss, self.val_bpb, self.val_ppl):
            m.update(nll, mask)
        self.val_acc.update(hits, mask)

    def on_validation_epoch_end(self):
        # compute() already reduces the sums over ranks; sync_dist only silences Lightning's warning
        self.log("val/loss", self.val_loss.compute(), sync_dist=True)
        self.log("val/bpb", self.val_bpb.compute(), prog_bar=True, sync_dist=True)
        self.log("val/ppl", self.val_ppl.compute(), sync_dist=True)
        self.log("val/acc", self.val_acc.compute(), sync_dist=True)
        # the number of completed training steps (Lightning's CSV "step" column is off by one for
        # validation inside fit and shifts after a resume): what learning curves are plotted against
        self.log("val/step", float(self.global_step), sync_dist=True)
        for m in (self.val_loss, self.val_bpb, self.val_ppl, self.val_acc):
            m.reset()

    # ------------------------------------------------------------------ non-finite values never reach the weights
    def on_before_optimizer_step(self, optimizer) -> None:
        """Raw gradients (before clipping): a non-finite one stops training before the update, so no
        checkpoint ever holds the weights it would have produced."""
        bad = [n for n, p in self.net.named_parameters()
               if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if bad:
            raise FloatingPointError(
                f"non-finite gradient at step {self.global_step} in {len(bad)} tensors (e.g. {bad[:3]}; "
                f"lr={self._current_lr():.3g}); the weights were not updated and the last checkpoint is the last "
                "finite one: lower optim.lr or raise optim.warmup_steps, keep trainer.gradient_clip_val set, or "
                "train in float32 (trainer.precision=32-true), then resume with ckpt_path=auto (or start afresh "
                "with ckpt_path=null if those weights have diverged too)"
            )

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        bad = [n for n, p in self.net.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:  # the update itself overflowed: stop before any checkpoint of this step is written
            raise FloatingPointError(
                f"the update at step {self.global_step} made {len(bad)} weight tensors non-finite (e.g. {bad[:3]}; "
                f"lr={self._current_lr():.3g}); no checkpoint of it was written: lower optim.lr and resume with "
                "ckpt_path=auto"
            )

    # ------------------------------------------------------------------ optimisation
    def apply_optim_on_resume(self) -> None:
        """After a checkpoint restored the optimiser and scheduler: use this run's ``optim`` values
        (learning rate, betas, eps, weight decay, warm-up and schedule), the schedule recomputed at the
        current step. Called by ``train`` when ``optim`` differs from the checkpoint's."""
        o, opt = self.optim_cfg, self.optimizers(use_pl_optimizer=False)
        sched = self.lr_schedulers()
        for g in opt.param_groups:
            g["betas"], g["eps"] = o.betas, o.eps
            if g["weight_decay"] > 0 or o.decay_all:
                g["weight_decay"] = o.weight_decay
        f = lr_lambda(o.warmup_steps, o.max_steps or self.trainer.max_steps, o.min_lr_ratio, o.schedule, o.power)
        sched.base_lrs = [o.lr] * len(opt.param_groups)
        sched.lr_lambdas = [f] * len(opt.param_groups)
        for g in opt.param_groups:
            g["lr"] = o.lr * f(sched.last_epoch)

    def _current_lr(self) -> float:
        try:
            return self.optimizers().param_groups[0]["lr"]
        except (RuntimeError, AttributeError, IndexError):
            return self.optim_cfg.lr

    def configure_optimizers(self):
        o = self.optim_cfg
        decay_all = self.net.decays_all_parameters if o.decay_all is None else o.decay_all
        decay, no_decay = [], []
        for p in self.net.parameters():
            if not p.requires_grad:
                continue
            # by default norms' scales and biases are not decayed; Megalodon decays all (w+1 storage)
            (decay if (p.dim() >= 2 or decay_all) else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=o.lr, betas=o.betas, eps=o.eps)
        max_steps = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else 0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.warmup_steps, o.max_steps or max_steps,
                                                                 o.min_lr_ratio, o.schedule, o.power))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["longlab"] = {
            "tokens_seen": self.tokens_seen,
            "timing": (self._tokens_timed, self._time_timed, self._cpu_timed),
            "torch_rng": torch.get_rng_state(),
            "carried_state": to_serializable(map_state(lambda t: t.detach().cpu(), self._state)),
            "crossbatch_d": self.cb_d,
            "resets": self.resets,
            "wall_time_s": self.wall_time_s,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("longlab", {})
        self.tokens_seen = extra.get("tokens_seen", 0)
        timing = tuple(extra.get("timing", (0, 0.0, 0.0)))
        self._tokens_timed, self._time_timed, self._cpu_timed = (timing + (0.0,))[:3]
        self.resets = extra.get("resets", 0)
        self._wall_before = float(extra.get("wall_time_s", 0.0))
        if "torch_rng" in extra:
            torch.set_rng_state(extra["torch_rng"])
        self._state = from_serializable(extra.get("carried_state"))
        if extra.get("crossbatch_d") is not None and self.crossbatch is not None:
            self.crossbatch.d = extra["crossbatch_d"]

    def on_train_start(self) -> None:
        self._fit_t0 = time.perf_counter()
        if self._state is not None:
            self._state = map_state(lambda t: t.to(self.device), self._state)
        if self.resume_optim_changes:
            self.apply_optim_on_resume()

    @property
    def wall_time_s(self) -> float:
        """Training wall time over every process of the run (resumed runs add up)."""
        t0 = getattr(self, "_fit_t0", None)
        return self._wall_before + (time.perf_counter() - t0 if t0 is not None else 0.0)
