#!/usr/bin/env python
"""Sweep the lambda of one or more methods on a validation split: the tables, the trade-off plot,
and (under the faithful or modern protocol) the lambdas picked, into configs/reproduce/lambda-<protocol>.yaml.

    scripts/sweep_lambda.py --method {all | M [M ...]} [--protocol {scratch,faithful,modern}] [--quick]
                            [--grid 0.1,1,10,100] [--split random] [--tasks 2] [--val-fraction 0.2]
                            [--seeds N] [--out DIR] [--data DIR] [--jobs J] [--metric top1] [--dry-run]

The command line of :mod:`factlearn.experiments.sweep`, which documents the validation split, the
trade-off and the rule that picks each method's lambda. Reads this checkout's configs/reproduce/
(and writes a protocol's lambda file there) and writes to its results/ by default.
"""

import sys
from pathlib import Path

from factlearn.experiments.sweep import main

if __name__ == "__main__":
    sys.exit(main(None, root=Path(__file__).resolve().parents[1]))
