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
        problem = _problem(doc)
        if problem is not None:
            raise UserError(f"{path} is malformed: {problem}")
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
        block = self.block(protocol)
        if metric not in block["matrix"]:
            raise UserError(f"{self.path} has no {metric} metric")
        return block["matrix"][metric]

    def sequence(self, metric: str, protocol: str | None = None) -> dict:
        """Average accuracy, BWT and the rest of :func:`sequence_metrics` over the tasks trained.
        Runs written before metrics.json had a sequence block get it derived from the matrix."""
        return self.block(protocol).get("sequence", {}).get(metric) or sequence_metrics(self.matrix(metric, protocol))

    def trained(self) -> int:
        """How many tasks the matrix covers (rows written so far)."""
        return len(self.block()["matrix"]["top1"])

    def complete(self) -> bool:
        """Every task of the sequence has its row: the run is finished."""
        return self.trained() == len(self.tasks)


def _problem(doc: object) -> str | None:
    """What makes ``doc`` not a metrics document of the schema above (None: it is one). Every key a
    reader of :class:`Metrics` indexes is checked here, so reading never fails later."""
    if not isinstance(doc, dict):
        return f"expected a JSON object, got {type(doc).__name__}"
    if not isinstance(doc.get("method"), str):
        return "no method"
    tasks = doc.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        return "no task list"
    blocks = doc.get("protocols")
    if not isinstance(blocks, dict) or doc.get("protocol") not in blocks:
        return "no block of its protocol under 'protocols'"
    for name, block in blocks.items():
        problem = _block_problem(block, tasks)
        if problem is not None:
            return f"protocols.{name}: {problem}"
    return None


def _block_problem(block: object, tasks: list[str]) -> str | None:
    if not isinstance(block, dict):
        return "expected an object"
    matrix, final, sequence = block.get("matrix"), block.get("final"), block.get("sequence", {})
    if not isinstance(matrix, dict) or "top1" not in matrix:
        return "no matrix (of top1 at least)"
    for metric, rows in matrix.items():
        if not (isinstance(rows, list) and 0 < len(rows) <= len(tasks)
                and all(isinstance(r, list) and len(r) == len(tasks) and all(_number(v) for v in r) for r in rows)):
            return f"matrix.{metric}: expected 1 to {len(tasks)} rows of {len(tasks)} numbers"
    if not isinstance(final, dict) or not all(isinstance(final.get(t), dict) for t in tasks):
        return "no final metrics for every task"
    for task in tasks:
        if not all(_number(final[task].get(m)) for m in matrix):
            return f"final.{task}: expected the numbers {', '.join(matrix)}"
    if not isinstance(sequence, dict) or not all(
            isinstance(v, dict) and _number(v.get("average")) and _number(v.get("bwt")) for v in sequence.values()):
        return "sequence: expected an average and a bwt per metric"
    return None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
