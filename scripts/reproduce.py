#!/usr/bin/env python
"""Reproduce the experiments of issues 7 and 17 with one command: tables and plots, from the world up.

    scripts/reproduce.py --suite {two-task,four-task,semantic,adaptation,topic,all} [SUITE ...] [--quick]
                         [--protocol {scratch,faithful,modern}] [--seeds N] [--out DIR] [--data DIR]
                         [--jobs J] [--device D] [--dry-run]

The command line of :mod:`factlearn.experiments.reproduce`, which documents the suites, the
training protocols, the results folder (summary.json included) and how runs are skipped and
resumed. Reads this checkout's configs/reproduce/ and writes to its results/ by default.
"""

import sys
from pathlib import Path

from factlearn.experiments.reproduce import main

if __name__ == "__main__":
    sys.exit(main(None, root=Path(__file__).resolve().parents[1]))
