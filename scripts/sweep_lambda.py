#!/usr/bin/env python
"""Sweep a method's lambda on a validation split and print the table it produced.

    scripts/sweep_lambda.py --method mas [--grid 0.1,1,10,100] [--quick] [--split random] [--tasks 2]
                            [--val-fraction 0.2] [--seeds N] [--out DIR] [--data DIR] [--jobs J]
                            [--metric top1]

The command line of :mod:`factlearn.experiments.sweep`, which documents the validation split and
how the best lambda is chosen. Reads this checkout's configs/reproduce/ and writes to its
results/ by default.
"""

import sys
from pathlib import Path

from factlearn.experiments.sweep import main

if __name__ == "__main__":
    sys.exit(main(None, root=Path(__file__).resolve().parents[1]))
