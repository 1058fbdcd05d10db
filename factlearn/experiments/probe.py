"""A probe: every checkpoint of a run evaluated on all the images of a view (a small data
directory of some facts' images), through :func:`factlearn.evaluate.evaluate_run`.

The probe file::

    {"run": RUN_DIR, "view": VIEW_DIR, "images": N,
     "after": {checkpoint task: {protocol: {task: the metrics of factlearn.evaluate.evaluate_view}}}}

(tasks with no image in the view are left out). Run as a child process of a reproduction:
``python -m factlearn.experiments.probe RUN_DIR VIEW_DIR OUT [DEVICE]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..data.manifest import load_dataset
from ..errors import UserError
from ..evaluate import evaluate_run
from ..io import atomic_write_text
from ..results import PROTOCOLS
from ..run import RunDir


def probe(run_dir: Path, view_dir: Path, out: Path, device: str = "auto") -> None:
    """Evaluate every completed checkpoint of ``run_dir`` on every image of ``view_dir`` under both
    protocols, as ``factlearn evaluate`` does on test images, and write the probe file ``out``."""
    after = evaluate_run(run_dir, view_dir, after=RunDir(run_dir).completed(), protocols=PROTOCOLS, device=device,
                         images="all")
    doc = {"run": str(run_dir), "view": str(view_dir), "images": len(load_dataset(view_dir).records), "after": after}
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")


def main(argv: list[str]) -> int:
    """``RUN_DIR VIEW_DIR OUT [DEVICE]``: write the probe; a UserError is one line and exit 2."""
    try:
        probe(Path(argv[0]), Path(argv[1]), Path(argv[2]), *argv[3:4])
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
