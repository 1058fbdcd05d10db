#!/usr/bin/env python
"""Reproduce the experiments of issue 7 with one command: tables and plots from scratch.

    scripts/reproduce.py --suite {two-task,four-task,semantic,adaptation,topic,all} [SUITE ...] [--quick]
                         [--seeds N] [--out DIR] [--data DIR] [--jobs J] [--device D] [--dry-run]

The command line of :mod:`factlearn.experiments.reproduce`, which documents the suites, the
results folder and how runs are skipped and resumed. Reads this checkout's configs/reproduce/
and writes to its results/ by default.
"""

import sys
from pathlib import Path

from factlearn.experiments.reproduce import main

if __name__ == "__main__":
    sys.exit(main(None, root=Path(__file__).resolve().parents[1]))
