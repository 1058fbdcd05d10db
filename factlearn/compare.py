"""Side-by-side comparison of runs from their metrics.json."""

from __future__ import annotations

from .errors import UserError
from .run import RunDir


def compare_table(run_dirs: list[str], metrics: list[str], protocol: str | None = None) -> str:
    """Markdown table: one row per run, final metric per task after the last task, and the mean."""
    docs = []
    for path in run_dirs:
        run = RunDir(path)
        run.require()
        doc = run.read_json("metrics.json")
        block = doc["protocols"][protocol] if protocol else doc
        docs.append((path, doc, block))
    tasks = docs[0][1]["tasks"]
    for path, doc, _ in docs:
        if doc["tasks"] != tasks:
            raise UserError(f"{path}: tasks {doc['tasks']} differ from {docs[0][0]}'s {tasks}")
    header = ["run", "method"] + [f"{t} {m}" for m in metrics for t in tasks] + [f"mean {m}" for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path, doc, block in docs:
        cells = [path, doc["method"]]
        cells += [f"{block['final'][t][m]:.3f}" for m in metrics for t in tasks]
        cells += [f"{sum(block['final'][t][m] for t in tasks) / len(tasks):.3f}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
