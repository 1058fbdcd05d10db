#!/usr/bin/env python
"""The page of ``factlearn serve`` in a real browser (issue 21): headless Chromium, a screenshot.

    python scripts/check_serve_page.py OUT.png [RUN_DIR] [--window 1280,860] [--chromium chromium]

Starts ``factlearn serve RUN_DIR --port 0`` on 127.0.0.1 (without RUN_DIR: a tiny two-task run
made in a temporary folder), loads ``/`` in headless Chromium (Debian's package ``chromium``; not
part of CI), checks in the rendered DOM that the run, the live checkpoint and the accuracy matrix
are there (exit 1 if not) and saves a screenshot to OUT.png for a person to look at. Uploading an
image is left to the API tests (tests/test_serve.py).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import server, tiny_run  # noqa: E402


def chromium(binary: str, profile: Path, window: str, *action: str, url: str) -> str:
    """Run headless Chromium on ``url`` with ``action`` (--dump-dom, --screenshot=...); its stdout."""
    # --no-sandbox: the check runs as root in containers; --virtual-time-budget lets the page's fetches finish
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--window-size={window}", "--virtual-time-budget=5000", *action, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"{binary} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    """Serve, render, check the DOM, save the screenshot; exit 1 when something is missing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="screenshot to write (PNG)")
    parser.add_argument("run_dir", nargs="?", type=Path, help="a trained run (default: make a tiny one)")
    parser.add_argument("--window", default="1280,860", help="window size, WIDTH,HEIGHT")
    parser.add_argument("--chromium", default="chromium", help="the browser binary")
    args = parser.parse_args()
    if shutil.which(args.chromium) is None:
        raise SystemExit(f"{args.chromium} not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or tiny_run(Path(tmp))
        with server(run_dir, "--device", "cpu") as url:
            dom = chromium(args.chromium, Path(tmp) / "profile", args.window, "--dump-dom", url=url)
            chromium(args.chromium, Path(tmp) / "profile", args.window, f"--screenshot={args.out.resolve()}", url=url)
    cells = re.findall(r'<td class="cell"[^>]*>([^<]*)</td>', dom)
    checks = {"the live checkpoint": "serving the checkpoint after" in dom,
              "the accuracy matrix": "after \\ task" in dom and any(c != "·" for c in cells),
              "the screenshot": args.out.is_file() and args.out.stat().st_size > 0}
    for what, ok in checks.items():
        print(f"{'ok' if ok else 'MISSING'}: {what}")
    print(f"matrix cells: {', '.join(cells)}\nscreenshot: {args.out}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
