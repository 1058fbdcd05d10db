"""Atomic file writes: write to a temporary file in the same folder, flush, fsync, rename, fsync
the folder; and reading JSON and YAML files with one-line errors.

A crash or a full disk leaves the previous version intact, never a half-written file. A kill
leaves at most a hidden temporary whose name holds the writer's pid (``.NAME.<pid>-XXXX.tmp``,
``.DIR.partial-<pid>``); :func:`remove_stale_temporaries` removes those of dead processes.
Written files get the usual permissions (0666 less the umask), whatever the writer did.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import yaml

from .errors import UserError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# The temporaries of atomic_path and atomic_dir: group 1 is the target's name, group 2 the pid.
_TEMP_FILE = re.compile(r"^\.(.+)\.(\d+)-[a-z0-9_]+\.tmp$")
_TEMP_DIR = re.compile(r"^\.(.+)\.partial-(\d+)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name tells a later run whether the writer is gone (remove_stale_temporaries).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # After the write: mkstemp makes 0600, and a writer may replace the file (safetensors does).
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename itself reaches the disk only with its folder: without this, after a power cut a
    # file written later (a checkpoint's state.json marker) could survive one renamed before it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: readers see the old file or the new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as safetensors (with string ``metadata``) to ``path`` atomically."""
    from safetensors.torch import save_file  # here: reading a config needs no torch

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out_dir``; on success it becomes ``out_dir``.

    ``out_dir`` must not exist or be empty. On any error the temporary directory is removed and
    ``out_dir`` is left as it was; the one a killed earlier attempt left (``.OUT.partial-<pid>``,
    its process gone) is removed first.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output directory {out} exists and is not empty; choose a new or empty directory")
    remove_stale_temporaries(out.parent, name=out.name)  # a killed earlier attempt's folder
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():  # left over by a crashed run with the same pid: ours by its name
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # checked empty above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def parse_json(text: str) -> Any:
    """``json.loads(text)``, with every way the text can fail raised as :class:`json.JSONDecodeError`
    (``msg`` and ``lineno`` name the problem), including the two json.loads raises otherwise: nesting
    deeper than the parser's recursion allows, and an integer too long for Python to convert."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except ValueError:  # Python refuses int() of a text of more than sys.get_int_max_str_digits() digits
        digits = re.search(rf"\d{{{sys.get_int_max_str_digits() + 1},}}", text)
        raise json.JSONDecodeError("a number with too many digits", text, digits.start() if digits else 0) from None


def read_json(path: str | Path) -> dict | list:
    """A JSON file; missing, unreadable or corrupt (too deep or a too long number included) is a
    UserError naming it."""
    path = Path(path)
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"missing {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is corrupt: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path, name: str | None = None, recursive: bool = False) -> list[Path]:
    """Remove the temporaries that killed writers left in ``folder``: the files of
    :func:`atomic_path` (``.NAME.<pid>-XXXX.tmp``) and the folders of :func:`atomic_dir`
    (``.NAME.partial-<pid>``) whose pid is not a live process. This process's own are kept.

    Args:
        folder: where to look (a missing folder has none).
        name: only the temporaries of this target name (``OUT`` for ``.OUT.partial-<pid>``).
        recursive: also look in every subfolder (a run directory's checkpoint folders).

    Returns:
        The paths removed.
    """
    folder, removed = Path(folder), []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = (_TEMP_DIR if entry.is_dir(follow_symlinks=False) else _TEMP_FILE).match(entry.name)
        if match and (name is None or match.group(1) == name):
            pid = int(match.group(2))
            if pid != os.getpid() and not pid_alive(pid):
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                logger.info("removed %s, left by process %d, which is gone", path, pid)
                removed.append(path)
                continue
        if recursive and entry.is_dir(follow_symlinks=False):
            removed += remove_stale_temporaries(entry.path, name, recursive)
    return removed


def read_yaml_document(path: str | Path) -> object:
    """The YAML document in ``path`` (safe loader: plain data only).

    Raises:
        FileNotFoundError: when it is missing (the caller names what was expected).
        UserError: on one line, ``PATH:LINE:COLUMN: not valid YAML: why``, for a syntax error
            or bytes that are not UTF-8; ``cannot read PATH: why`` for another OS error.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"{path}:{line}:{column}: not valid YAML: not UTF-8 "
                        f"(byte 0x{raw[exc.start]:02x})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}{_yaml_where(exc)}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML: nested too deeply") from None
    except ValueError as exc:  # an integer past Python's digit limit
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:  # 0-based in PyYAML
        return f":{mark.line + 1}:{mark.column + 1}"
    return ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    text = ", ".join(p for p in parts if p) or str(exc)
    return " ".join(text.split())  # one line

