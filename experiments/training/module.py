"""One LightningModule that trains any architecture honouring the house contract
(``architectures.contract``): the training and validation steps, carried state and chunk parallelism.
The objective lives in ``objective``, the optimiser in ``optim``, throughput and divergence checks in
``bookkeeping`` (callbacks that ``train`` attaches)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from architectures.common import detach_state, from_serializable, map_state, to_serializable
from architectures.contract import LanguageModel, check
from experiments.config import build, optim_config, to_plain
from experiments.training.metrics import Accuracy, BitsPerByte, MeanNLL, Perplexity
from experiments.training.objective import Objective
from experiments.training.optim import apply_on_resume, optimizer_and_schedule
from experiments.training.parallel import group_total, receive_state, send_state, sequence_group, span_batch


class CausalLMModule(L.LightningModule):
    """Next-byte cross-entropy for ``net(tokens, state) -> (logits, state)``.

    ``net`` is a Hydra config (``cfg.model.net``) instantiated here, so hparams hold only plain dicts.
    With ``carry_state`` the module keeps the net's state between training steps (the data must be
    the document-stream sampler so that consecutive batches are consecutive text) and detaches it
    after every step: truncated back-propagation through time. ``crossbatch`` (FoT) selects the
    CrossBatch objective; ``sequence_parallel`` > 1 splits every sequence over that many ranks.
    """

    def __init__(self, net: dict, optim: dict | None = None, carry_state: bool = False, ignore_index: int = -100,
                 crossbatch: dict | None = None, sequence_parallel: int = 1):
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
        self.objective = Objective(self.net, crossbatch, ignore_index)
        self.carry_state = carry_state
        self.train_loss, self.train_bpb, self.train_acc = MeanNLL(), BitsPerByte(), Accuracy()
        self.val_loss, self.val_bpb, self.val_ppl, self.val_acc = MeanNLL(), BitsPerByte(), Perplexity(), Accuracy()
        self._state = None
        self.resume_optim_changes: list[str] = []  # set by train when resuming with other optim values

    @property
    def crossbatch(self):
        return self.objective.crossbatch

    def training_step(self, batch, batch_idx):
        state = self._state if self.carry_state else None
        group = None
        if self.sequence_parallel > 1:  # this rank's span; the group's scored targets; the previous rank's state
            group = sequence_group(self.global_rank, self.trainer.world_size, self.sequence_parallel)
            batch = span_batch(batch, group)
            total = group_total(self.objective.scored(batch)[0].sum().float(), group)  # every rank, before the chain
            state, link = receive_state(group, self.device)
        nll, mask, state, hits = self.objective.nll(batch, state)
        # mean over scored targets; a batch without any (e.g. a window of definitions only) gives 0
        loss = (nll * mask).sum() / mask.sum().clamp(min=1)
        if group is not None:  # DDP's average of these is the whole sequence's mean; the state goes on
            loss = (nll * mask).sum() / total.clamp(min=1) * group.size
            loss = loss + link + send_state(state, group).to(loss.device)
        if self.carry_state:
            self._state = detach_state(state)
        self.train_loss.update(nll, mask)
        self.train_bpb.update(nll, mask, self.objective.target_bytes(batch))
        self.train_acc.update(hits, mask)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self._log_training()
        return loss

    def _log_training(self) -> None:
        if self.train_loss.count > 0:  # steps without scored targets log no loss
            self.log("train/loss", self.train_loss.compute(), prog_bar=True)
            self.log("train/bpb", self.train_bpb.compute(), prog_bar=True)
            acc = self.train_acc.compute()
            self.log("train/acc", acc)
            if self.crossbatch is not None:
                self.crossbatch.maybe_switch({"train/acc": float(acc), "train/loss": float(self.train_loss.compute())},
                                             self.trainer.datamodule.batch_size)
        if self.crossbatch is not None:
            self.log("train/crossbatch_d", float(self.crossbatch.d))
        for m in (self.train_loss, self.train_bpb, self.train_acc):
            m.reset()
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])

    def validation_step(self, batch, batch_idx):
        nll, mask, _, hits = self.objective.nll(batch)
        for m in (self.val_loss, self.val_ppl):
            m.update(nll, mask)
        self.val_bpb.update(nll, mask, self.objective.target_bytes(batch))
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

    def configure_optimizers(self):
        max_steps = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else 0
        return optimizer_and_schedule(self.net, self.optim_cfg, max_steps, self.net.decays_all_parameters)

    # ------------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("longlab", {}).update({
            "torch_rng": torch.get_rng_state(),
            "carried_state": to_serializable(map_state(lambda t: t.detach().cpu(), self._state)),
            "crossbatch_d": None if self.crossbatch is None else self.crossbatch.d,
            "resets": self.objective.resets,
        })

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("longlab", {})
        self.objective.resets = extra.get("resets", 0)
        if "torch_rng" in extra:
            torch.set_rng_state(extra["torch_rng"])
        self._state = from_serializable(extra.get("carried_state"))
        if extra.get("crossbatch_d") is not None and self.crossbatch is not None:
            self.crossbatch.d = extra["crossbatch_d"]

    def on_train_start(self) -> None:
        if self._state is not None:
            self._state = map_state(lambda t: t.to(self.device), self._state)
        if self.resume_optim_changes:  # train resumed with changed optim values: apply them from this step
            apply_on_resume(self.optimizers(use_pl_optimizer=False), self.lr_schedulers(), self.optim_cfg,
                            self.trainer.max_steps)
