"""metrics.json: the one owner of the results document a run writes after every task.

Training writes it (:func:`metrics_document`); ``compare``, the CLI and the experiment code read
it through :class:`Metrics`, so its schema lives here only::

    {"method": "mas", "protocol": "standard", "tasks": ["B1", "B2"],
     "protocols": {"standard" | "generalized": {
         "matrix":   {metric: [[value of task j after training task i for j] for i]},
         "final":    {task: {metric: value after the last task trained, "by_order", "n", ...}},
         "sequence": {metric: {"average", "bwt", ...}}}},
     ...and the block of the run's own ``protocol`` repeated at the top level}

Metrics are fractions in [0, 1]; the matrix has one row per task trained so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import UserError
from .io import read_json
from .retrieval.metrics import sequence_metrics

PROTOCOLS = ("standard", "generalized")
METRICS = ("top1", "top5", "top10", "mrr")
RETRIEVAL_METRICS = ("map", "map@100")
FINAL_EXTRAS = RETRIEVAL_METRICS + ("by_order", "n")
FILE = "metrics.json"


def metrics_document(method: str, protocol: str, tasks: Sequence[str], rows: dict[str, list[dict]]) -> dict:
    """metrics.json from the metric rows so far: ``rows[protocol][i][task]`` = the metrics of
    ``task`` after training task i (:func:`factlearn.evaluate.evaluate_tasks`).

    ``final[task]`` holds the last row's METRICS plus whichever of FINAL_EXTRAS it has (rows
    restored from an older checkpoint may lack them); matrix and sequence cover METRICS plus
    the RETRIEVAL_METRICS present in every row.
    """
    names = list(tasks)
    doc: dict = {"method": method, "protocol": protocol, "tasks": names, "protocols": {}}
    for proto, per_task_rows in rows.items():
        every = [row[n] for row in per_task_rows for n in names]
        keys = METRICS + tuple(m for m in RETRIEVAL_METRICS if all(m in r for r in every))
        matrix = {m: [[row[n][m] for n in names] for row in per_task_rows] for m in keys}
        last = per_task_rows[-1]
        doc["protocols"][proto] = {
            "matrix": matrix,
            "final": {n: {m: last[n][m] for m in METRICS + FINAL_EXTRAS if m in last[n]} for n in names},
            "sequence": {m: sequence_metrics(matrix[m]) for m in keys},
        }
    doc.update(doc["protocols"][protocol])
    return doc


@dataclass
class Metrics:
    """A run's metrics.json, read and checked once: what every reader of results uses."""

    path: Path
    doc: dict

    @classmethod
    def read(cls, run_dir: str | Path) -> Metrics:
        """The metrics.json of ``run_dir``; missing or malformed is a UserError naming the file."""
        path = Path(run_dir) / FILE
        doc = read_json(path)
        if not (isinstance(doc, dict) and isinstance(doc.get("tasks"), list) and isinstance(doc.get("protocols"), dict)
                and isinstance(doc.get("method"), str) and doc.get("protocol") in doc["protocols"]):
            raise UserError(f"{path} is malformed: not a factlearn metrics document")
        return cls(path, doc)

    @property
    def method(self) -> str:
        """The continual-learning method of the run."""
        return self.doc["method"]

    @property
    def tasks(self) -> list[str]:
        """The task names of the sequence, in training order."""
        return list(self.doc["tasks"])

    @property
    def protocol(self) -> str:
        """The run's own protocol (``eval.protocol``), the block shown by default."""
        return self.doc["protocol"]

    def block(self, protocol: str | None = None) -> dict:
        """matrix, final and sequence of ``protocol`` (default: the run's own)."""
        protocol = protocol or self.protocol
        if protocol not in self.doc["protocols"]:
            raise UserError(f"{self.path} has no {protocol} protocol")
        return self.doc["protocols"][protocol]

    def final(self, protocol: str | None = None) -> dict[str, dict]:
        """task -> its metrics after the last task trained."""
        return self.block(protocol)["final"]

    def matrix(self, metric: str, protocol: str | None = None) -> list[list[float]]:
        """matrix[i][j]: ``metric`` of task j after training task i."""
        return self.block(protocol)["matrix"][metric]

    def sequence(self, metric: str, protocol: str | None = None) -> dict:
        """Average accuracy, BWT and the rest of :func:`sequence_metrics` over the tasks trained.
        Runs written before metrics.json had a sequence block get it derived from the matrix."""
        block = self.block(protocol)
        return block.get("sequence", {}).get(metric) or sequence_metrics(block["matrix"][metric])

    def trained(self) -> int:
        """How many tasks the matrix covers (rows written so far)."""
        return len(self.block()["matrix"]["top1"])

    def complete(self) -> bool:
        """Every task of the sequence has its row: the run is finished."""
        return self.trained() == len(self.tasks)
