"""The child processes of a reproduction: ``python -m factlearn ...`` and the probes.

Children get this environment (PYTHONPATH included) with one OpenMP / MKL thread each, and run
from the log folder: ``python -m`` puts its working directory first on sys.path, so a checkout's
factlearn/ there would shadow PYTHONPATH (e.g. ``PYTHONPATH=/tmp/fresh`` to run a frozen copy).
:func:`check_child_factlearn` checks that they import the same factlearn as this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..data.images import CACHE_ENV
from ..errors import UserError


def child_env(image_cache: Path | None = None) -> dict:
    """This environment with one OpenMP / MKL thread per process and, unless the caller's
    environment names one, ``image_cache`` as the decoded-image cache of the runs (every run
    decodes the same world: about 30 s each at full scale without it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if image_cache is not None:
        env.setdefault(CACHE_ENV, str(image_cache))
    return env


def child_cwd(log: Path) -> Path:
    """Where children run: the log folder, never the caller's directory (see the module's doc)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return log.parent


def check_child_factlearn(log: Path) -> str:
    """The factlearn package the children import, which must be this process's (one code for all)."""
    import factlearn

    mine = str(Path(factlearn.__file__).resolve().parent)
    code = "import factlearn, pathlib; print(pathlib.Path(factlearn.__file__).resolve().parent)"
    done = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=child_cwd(log), capture_output=True,
                          text=True, check=False)
    theirs = done.stdout.strip()
    if theirs != mine:
        raise UserError(f"training processes would import factlearn from {theirs or done.stderr.strip()!r}, "
                        f"this process from {mine!r}")
    return mine


def factlearn_cli(args: list[str], log: Path) -> None:
    """Run ``python -m factlearn ARGS``, output appended to ``log``; a failure is a UserError."""
    with open(_log(log), "a", encoding="utf-8") as f:
        f.write(f"$ factlearn {' '.join(args)}\n")
        f.flush()
        done = subprocess.run([sys.executable, "-m", "factlearn", *args], stdout=f, stderr=subprocess.STDOUT,
                              env=child_env(), cwd=child_cwd(log), check=False)
    if done.returncode != 0:
        raise UserError(f"factlearn {args[0]} failed (exit {done.returncode}); see {log}")


def call(cmd: list[str], log: Path, env: dict) -> tuple[int, float]:
    """Run ``cmd`` in ``env`` with its output appended to ``log``.

    Returns:
        The exit code and the CPU seconds the child used (NaN where the platform does not say).
    """
    with open(_log(log), "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=child_cwd(log))
        if not hasattr(os, "wait4"):  # not on POSIX: no per-child CPU time
            return proc.wait(), float("nan")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode, usage.ru_utime + usage.ru_stime


def _log(log: Path) -> Path:
    log.parent.mkdir(parents=True, exist_ok=True)
    return log
