"""Where to compute: the one place a ``--device`` option is turned into a torch device."""

from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` takes the GPU when there is one; ``cuda`` without one, or a name torch does not
    know, is a UserError naming the option."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device (use auto, cpu or cuda)") from None
