"""Continual-learning methods, one module each, behind :class:`factlearn.continual.base.Method`."""

from __future__ import annotations

from ..config import MethodConfig
from ..errors import UserError
from .base import Method, TaskData
from .mas import MAS

METHODS: dict[str, type[Method]] = {"finetune": Method, "mas": MAS}


def create_method(cfg: MethodConfig) -> Method:
    try:
        return METHODS[cfg.name](cfg)
    except KeyError:
        raise UserError(f"unknown method {cfg.name!r} (choose from {', '.join(sorted(METHODS))})") from None


__all__ = ["METHODS", "Method", "TaskData", "create_method"]
