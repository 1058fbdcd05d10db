"""Continual-learning methods, one module each, behind :class:`factlearn.continual.base.Method`.

Shared by them: ``base`` (the hooks, the quadratic penalty, the eval-mode importance loop
:func:`~factlearn.continual.base.mean_over_samples`), ``per_sample`` (the exact per-sample
|gradient| engine of MAS), ``unlabeled`` (label-free importance data of MAS and l-MAS) and
``concentration`` (how an importance is spread and how tasks' importances overlap: diagnostics).
"""

from __future__ import annotations

from ..config import MethodConfig
from ..errors import UserError
from .base import Method, StepBatch, TaskData
from .ewc import EWC, OnlineEWC
from .joint import Joint
from .l2 import L2
from .lmas import LMAS
from .lwf import LwF
from .mas import MAS
from .si import SI

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Method, MAS, LMAS, L2, EWC, OnlineEWC, SI, LwF, Joint)
}


def create_method(cfg: MethodConfig) -> Method:
    """The one way methods get built: ``cfg.name`` looked up in :data:`METHODS`, ``cfg`` checked
    for that method (:meth:`Method.check_config`, a one-line UserError naming the option)."""
    try:
        cls = METHODS[cfg.name]
    except KeyError:
        raise UserError(f"unknown method {cfg.name!r} (choose from {', '.join(sorted(METHODS))})") from None
    cls.check_config(cfg)
    return cls(cfg)


__all__ = ["METHODS", "Method", "StepBatch", "TaskData", "create_method"]
