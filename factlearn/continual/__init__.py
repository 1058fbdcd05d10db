"""Continual-learning methods, one module each, behind :class:`factlearn.continual.base.Method`."""

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
from .unlabeled import DataImportance

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Method, MAS, LMAS, L2, EWC, OnlineEWC, SI, LwF, Joint)
}


def create_method(cfg: MethodConfig) -> Method:
    try:
        cls = METHODS[cfg.name]
    except KeyError:
        raise UserError(f"unknown method {cfg.name!r} (choose from {', '.join(sorted(METHODS))})") from None
    if cfg.importance_data is not None and not issubclass(cls, DataImportance):
        raise UserError(f"method.importance_data is for label-free importance (mas, lmas), not {cfg.name!r}")
    return cls(cfg)


__all__ = ["METHODS", "Method", "StepBatch", "TaskData", "create_method"]
