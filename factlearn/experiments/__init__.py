"""The experiments of the project (issues 7 and 17) as library code: plans of runs, their execution through
``factlearn train``, and the tables, plots and pages of a results folder.

``scripts/reproduce.py`` (:mod:`.reproduce`) and ``scripts/sweep_lambda.py`` (:mod:`.sweep`) are
their command lines. Modules, each one concept, in the order a reproduction uses them:

- :mod:`.config`    the experiments file (configs/reproduce/experiments.yaml), typed and checked
- :mod:`.protocols` the training protocols (scratch, faithful, modern), their run configs and lambda files
- :mod:`.plan`      which task sequences, views and runs the suites need; the results folder's paths
- :mod:`.prepare`   the world, pretrained backbone, task files, views and configs a plan needs; optimizer
                    steps per run
- :mod:`.children`  the child processes (``python -m factlearn``), their environment and logs
- :mod:`.execute`   training (skip complete runs, resume started ones) and probing, J at a time
- :mod:`.probe`     a run's checkpoints evaluated on a view (:func:`factlearn.evaluate.evaluate_run`)
- :mod:`.tables`    a suite's results and markdown tables
- :mod:`.plots`     a suite's figures
- :mod:`.summary`   summary.json: every number of the tables, with its seeds
- :mod:`.report`    README.md, the suites' pages and timings.json
- :mod:`.tradeoff`  the lambda trade-off of a sweep and the rule that picks each method's lambda

This package sits at the top, next to the CLI: it may use any of factlearn (but the CLI, which it
runs as a child process), and nothing in factlearn imports it.
"""
