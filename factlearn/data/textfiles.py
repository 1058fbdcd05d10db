"""Reading the text files of a data set: UTF-8 text, and CSV files with a header.

Every problem names the file and line. A problem of the whole file (unreadable, not UTF-8, a bad
header) is a :class:`UserError`. A bad row goes to a ``bad_row(reason, message)`` callback instead:
the default, :func:`refuse`, raises it as a UserError too, and an importer passes one that counts
and skips bad rows (:meth:`factlearn.data.importers.Problems.add`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import UserError

# Reasons a row is bad, as passed to ``bad_row`` (the importers add their own).
MALFORMED = "malformed row"
UNKNOWN_COLUMN = "unknown column"

BadRow = Callable[[str, str], None]  # (reason, "file:line: why")


def refuse(reason: str, message: str) -> None:
    """The default ``bad_row``: a bad row is a :class:`UserError` with ``message`` (which names file
    and line); ``reason`` only matters to callers that count bad rows."""
    raise UserError(message)


def shown(text: object) -> str:
    """``text`` for a one-line message: as it is when it is printable text, else its ``repr`` (so
    a line break, a NUL or a terminal escape in a name cannot break or garble the message)."""
    return text if isinstance(text, str) and text.isprintable() and text.strip() == text and text else repr(text)


def read_text(path: Path) -> str:
    """A UTF-8 file's text (a leading byte-order mark dropped), or a UserError naming file and line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the text
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8") from None


def read_csv(path: Path, columns: Sequence[str], required: Sequence[str],
             bad_row: BadRow = refuse, need_rows: bool = False) -> Iterator[tuple[int, dict[str, str | None]]]:
    """Rows of a CSV file with a header, as ``(line, {column: text or None})``.

    Args:
        path: the CSV file (UTF-8, a byte-order mark and CRLF line ends allowed; quoted cells may
            hold line breaks).
        columns: the columns the header may name.
        required: the columns it must name.
        bad_row: called as ``bad_row(MALFORMED, "file:line: why")`` for a row with too many or too
            few cells, which is then left out; the default raises.
        need_rows: refuse a file with a header and no row below it: a problem of the whole file,
            so a UserError whatever ``bad_row`` does.

    Returns:
        An iterator of ``(line, row)``: ``line`` is the row's last line in the file, ``row`` maps
        each header column to its cell, None for an empty one. A first column with an empty name
        or ``Unnamed: 0`` (the index column pandas writes) is left out.

    Raises:
        UserError: for an unreadable or empty file (or, with ``need_rows``, a header only), an
            unknown, duplicate or missing column, or a cell the csv module cannot read.
    """
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise UserError(f"{path}:1: not a valid CSV header ({exc})") from None
    if not header:
        raise UserError(f"{path}: empty file (expected a header with {', '.join(required)})")
    names = list(header[1:] if header[0] in ("", "Unnamed: 0") else header)
    for name in names:
        if name not in columns:
            raise UserError(f"{path}:1: unknown column {name!r} (expected {', '.join(columns)})")
        if names.count(name) > 1:
            raise UserError(f"{path}:1: column {name!r} appears twice")
    for name in required:
        if name not in names:
            raise UserError(f"{path}:1: missing column {name!r}")
    rows = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            if need_rows and not rows:
                raise UserError(f"{path}: a header and no rows") from None
            return
        except csv.Error as exc:
            # + 1: the line being read is not counted yet
            raise UserError(f"{path}:{reader.line_num + 1}: malformed CSV ({exc})") from None
        where = f"{path}:{reader.line_num}"
        rows += 1
        if None in row:
            bad_row(MALFORMED, f"{where}: more cells than columns")
        elif any(v is None for v in row.values()):
            bad_row(MALFORMED, f"{where}: fewer cells than columns")
        else:
            yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items() if k in names}
