"""Learning without Forgetting (Li & Hoiem, ECCV 2016, arXiv 1606.09282), adapted to embeddings.

LwF keeps the previous model's responses on the NEW task's data as soft targets (LwF Eq. 2,
knowledge distillation). Here the responses are embeddings, not class probabilities, so the
distillation term is a squared distance between slot-normalised embeddings (the vectors retrieval
ranks by):

    lambda * ( mean_n ||v(x_n) - v_old(x_n)||^2  +  mean_f ||u(f) - u_old(f)||^2 )

over the batch's images x_n and the facts f the step trains against. The old model is a frozen
copy from the end of the previous task, in eval mode (as FACIL's LwF): its targets do not depend on
the batch. The current model's embeddings are the training forward's, in train mode, so with
batch-norm the term is not exactly zero at the start of a task; in eval mode it is.

State: ``old.<name>`` for every entry of the old model's ``state_dict()`` (parameters, and the
batch-norm statistics its eval-mode function needs).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import MethodConfig
from ..model.two_tower import normalize_slots
from .base import Method, StepBatch, TaskData


class LwF(Method):
    """LwF: distil the previous model's embeddings of the current data (LwF Eq. 2).

    Options (``method.*``): ``lam``, the weight of the distillation term.
    """

    name = "lwf"
    options = ("lam",)

    def __init__(self, cfg: MethodConfig):
        super().__init__(cfg)
        self._old: nn.Module | None = None  # rebuilt from the state when first needed

    def after_task(self, model: nn.Module, task: TaskData) -> None:
        """Keep a copy of the model's state: the teacher of the next task."""
        self._set("old", {n: t.detach().clone() for n, t in model.state_dict().items()})
        self._old = None
        super().after_task(model, task)

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        """Restore the old model's state (the frozen copy is rebuilt when next needed)."""
        super().load_state_dict(state, device)
        self._old = None

    def old_model(self, model: nn.Module) -> nn.Module | None:
        """The frozen previous model (None before the first task ends)."""
        old = self._get("old")
        if not old:
            return None
        if self._old is None:
            self._old = copy.deepcopy(model)
            self._old.load_state_dict(old)
            self._old.eval().requires_grad_(False)
            for p in self._old.parameters():
                p.grad = None
        return self._old

    def penalty(self, model: nn.Module, batch: StepBatch | None = None) -> torch.Tensor | None:
        """``lam`` times the squared distance of the slot-normalised embeddings to the old model's."""
        old = self.old_model(model)
        if old is None:
            return None
        if batch is None:
            raise ValueError("LwF.penalty needs the step's batch")
        img = batch.image_emb if batch.image_emb is not None else model.embed_images(batch.pixels)  # (B, 3, d)
        fact = batch.fact_emb if batch.fact_emb is not None else model.embed_facts(batch.fact_tokens, batch.fact_mask)
        with torch.no_grad():
            old_img = normalize_slots(old.embed_images(batch.pixels))  # (B, 3*d)
            old_fact = normalize_slots(old.embed_facts(batch.fact_tokens, batch.fact_mask), batch.fact_mask)  # (F, 3*d)
        img_term = (normalize_slots(img) - old_img).pow(2).sum(1).mean()
        fact_term = (normalize_slots(fact, batch.fact_mask) - old_fact).pow(2).sum(1).mean()
        return self.cfg.lam * (img_term + fact_term)
