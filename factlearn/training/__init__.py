"""Training: a session's data and model, the step, one task's loop, resume state, the run loop.

Modules, each one concept: :mod:`.session` (data staged in memory, labels, the method's task
data), :mod:`.step` (one optimizer step), :mod:`.schedule` (learning rate, plateau), :mod:`.task`
(the epochs of one task), :mod:`.state` (checkpoint contents and resume), :mod:`.signals` (Ctrl-C),
:mod:`.loop` (the task sequence and the run directory: :func:`train`), :mod:`.logs` (``train.log``:
TensorBoard and scalars.csv), :mod:`.pretrain` (the image
tower on a base world: ``factlearn pretrain``), :mod:`.provenance` (its record, pretrain.json).
"""

from .loop import train
from .schedule import lr_at
from .session import Session
from .step import Diverged, StepInput, train_step

__all__ = ["Diverged", "Session", "StepInput", "lr_at", "train", "train_step"]
