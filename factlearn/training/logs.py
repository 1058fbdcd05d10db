"""What a run logs while it trains (``train.log``), under RUN_DIR/logs: TensorBoard event files
(``tensorboard``) and ``scalars.csv`` (``csv``: one ``step,tag,value`` row per scalar).

Every value is logged at the global step: the optimizer steps of every task so far. Tags:

- per step: ``train/loss`` (the task loss), ``train/penalty`` (the method's term, 0 without one)
  and ``train/lr``;
- after every task, per protocol P and metric M (metrics.json's): ``P/M/<task>`` for each task
  trained so far (the accuracy-matrix row), and ``P/M_avg``, ``P/M_bwt``, ``P/M_forgetting``
  (:func:`factlearn.retrieval.metrics.sequence_metrics`; BWT and forgetting from the second task on);
- after every importance computation (the method's ``omega.*`` state, read after ``after_task``):
  ``importance/<parameter>``, a histogram of Omega (TensorBoard only), and ``importance_total/<tower>``.

Only rank 0 logs. Logging reads values the step has computed already: it draws no random number
and changes no computation, so a resumed run stays bit-identical. On ``--resume`` the logs are
continued: what was logged after the checkpoint resumed from is dropped (the CSV is cut, and the
TensorBoard writer purges those steps: ``purge_step``), so a killed and resumed run shows each
step once. A run killed between a task's checkpoint and its task-end logs (a moment) lacks that
task's task-end values. The weights of a resumed run are bit-identical; the penalty's logged value
may differ in its last float32 bit (the order of the additions in its sum is not fixed).
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from pathlib import Path
from typing import Sequence

import torch

from ..errors import UserError
from ..io import atomic_write_text
from .schedule import task_steps
from .session import Session

LOG_DIR = "logs"
CSV_FILE = "scalars.csv"
CSV_HEADER = ("step", "tag", "value")


def check_loggers(kinds: Sequence[str]) -> None:
    """Refuse ``train.log: [tensorboard]`` without the tensorboard package, in one line, before a
    run starts."""
    if "tensorboard" in kinds:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UserError("train.log: tensorboard needs the tensorboard package: pip install tensorboard "
                            "(or pip install -e '.[tensorboard]'), or log csv only") from None


class RunLog:
    """The loggers of ``train.log`` writing into ``folder`` (RUN_DIR/logs).

    Args:
        folder: where the logs go; created when the first value is logged.
        kinds: ``train.log``'s loggers (``tensorboard``, ``csv``); none: every call does nothing.
        resume: continue the logs of a resumed run (fresh: whatever ``folder`` holds is removed).
    """

    def __init__(self, folder: Path, kinds: Sequence[str], resume: bool):
        self.folder, self.kinds, self.resume = Path(folder), set(kinds), resume
        self.writer = None  # the TensorBoard SummaryWriter, once started
        self.csv_file = None
        self.csv = None
        self.started = False

    def _start(self, kept: int) -> None:
        """Open the loggers; resuming, drop what was logged after step ``kept``."""
        self.started = True
        if not self.kinds:
            return
        if not self.resume:
            shutil.rmtree(self.folder, ignore_errors=True)  # left by a start that never reached a checkpoint
        self.folder.mkdir(parents=True, exist_ok=True)
        if "csv" in self.kinds:
            path = self.folder / CSV_FILE
            if self.resume and path.is_file():
                _cut_csv(path, kept)
            fresh = not path.is_file()
            self.csv_file = path.open("a", newline="", encoding="utf-8")
            self.csv = csv.writer(self.csv_file, lineterminator="\n")
            if fresh:
                self.csv.writerow(CSV_HEADER)
        if "tensorboard" in self.kinds:
            from torch.utils.tensorboard import SummaryWriter

            # A new event file; TensorBoard drops the earlier files' events from purge_step on.
            self.writer = SummaryWriter(str(self.folder), purge_step=kept + 1 if self.resume else None)

    def step(self, offset: int, done: int, loss: float, penalty: float, lr: float) -> None:
        """Log a training step: step ``done`` (1-based) of a task whose first step follows ``offset``."""
        step = offset + done
        if not self.started:
            self._start(step - 1)
        self._scalars(step, {"train/loss": loss, "train/penalty": penalty, "train/lr": lr})

    def task_end(self, step: int, metrics: dict, trained: int, state: dict[str, torch.Tensor]) -> None:
        """Log what is known after a task, at global ``step``: the accuracy-matrix rows and sequence
        metrics of ``metrics`` (metrics.json's document after ``trained`` tasks) and the importance
        in the method's ``state`` (``omega.<parameter>`` tensors)."""
        if not self.started:
            self._start(step)
        self._scalars(step, task_scalars(metrics, trained))
        omega = {k[len("omega."):]: v for k, v in state.items() if k.startswith("omega.")}
        self._scalars(step, {f"importance_total/{tower}": total for tower, total in tower_totals(omega).items()})
        if self.writer is not None:
            for name, values in omega.items():
                self.writer.add_histogram(f"importance/{name}", values.detach().double().cpu().reshape(-1), step)
        self.flush()

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            if self.csv is not None:
                self.csv.writerow((step, tag, repr(float(value))))
            if self.writer is not None:
                self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        """Write what is buffered (before a checkpoint: the logs then hold every step it covers)."""
        if self.csv_file is not None:
            self.csv_file.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the loggers."""
        if self.csv_file is not None:
            self.csv_file.close()
            self.csv_file = self.csv = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _cut_csv(path: Path, kept: int) -> None:
    """Keep the header and the rows of steps up to ``kept`` (atomically)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(r for r in rows[1:] if len(r) == 3 and r[0].isdigit() and int(r[0]) <= kept)
    atomic_write_text(path, out.getvalue())


def task_scalars(metrics: dict, trained: int) -> dict[str, float]:
    """The task-end scalars of a metrics.json document after ``trained`` tasks (see the module
    docstring); tasks not trained yet and undefined values (BWT after one task) are left out."""
    names = metrics["tasks"][:trained]
    out: dict[str, float] = {}
    for proto, block in metrics["protocols"].items():
        for metric, matrix in block["matrix"].items():
            out.update({f"{proto}/{metric}/{name}": matrix[-1][j] for j, name in enumerate(names)})
            seq = block["sequence"][metric]
            for key, value in (("avg", seq["average"]), ("bwt", seq["bwt"]),
                               ("forgetting", seq.get("mean_forgetting", math.nan))):
                if not math.isnan(value):
                    out[f"{proto}/{metric}_{key}"] = value
    return out


def tower_totals(omega: dict[str, torch.Tensor]) -> dict[str, float]:
    """The sum of Omega over each tower's parameters; a tower is the first component of the name."""
    totals: dict[str, float] = {}
    for name, values in omega.items():
        tower = name.split(".", 1)[0]
        totals[tower] = totals.get(tower, 0.0) + float(values.sum(dtype=torch.float64))
    return totals


def steps_before(s: Session, t: int, epochs: dict[str, int]) -> int:
    """The global step at the start of task ``t``: the optimizer steps of tasks 0..t-1 (``epochs``:
    the epochs each trained, fewer than ``train.epochs`` at a plateau)."""
    cfg = s.cfg.train
    return sum(task_steps(len(s.rows(s.stage(u), test=False)), cfg.batch_size, epochs.get(task.name, cfg.epochs))
               for u, task in enumerate(s.tasks[:t]))
