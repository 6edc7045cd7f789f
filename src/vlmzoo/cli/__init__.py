"""The ``vlmzoo`` command: ``list``, ``info``, ``demo``, ``train`` (also under torchrun), ``ablate``, ``zoo``,
``convert-checkpoint``.

- :mod:`~vlmzoo.cli.parser`: the commands and their flags;
- :mod:`~vlmzoo.cli.arguments`: the types that refuse a bad flag value up front;
- :mod:`~vlmzoo.cli.commands`: one thin handler per command, each calling a recipe or library function;
- :mod:`~vlmzoo.cli.report`: a failure as one line and an exit code (2 usage, 1 run time).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from vlmzoo.cli.parser import build_parser
from vlmzoo.cli.report import INTERRUPTED, explain

__all__ = ["build_parser", "main"]

RESUMABLE = ("demo", "train")
OUTPUTS = ("run_dir", "out")  # the flags naming where a command writes


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    A user's mistake prints one line ``vlmzoo: error: ...`` to stderr (see :mod:`vlmzoo.cli.report`);
    a bug in vlmzoo keeps its traceback.
    """
    command = output = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        output = next((getattr(args, name) for name in OUTPUTS if getattr(args, name, None)), None)
        return args.func(args)
    except KeyboardInterrupt:
        hint = "; the last checkpoint is intact (continue with --resume)" if command in RESUMABLE else ""
        if command == "ablate":
            hint = "; finished runs and the last checkpoint are kept (the same command continues the grid)"
        print(f"vlmzoo: interrupted{hint}", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:
        failure = explain(error, output)
        if failure is None:
            raise
        print(f"vlmzoo: error: {failure.line}", file=sys.stderr)
        return failure.code


if __name__ == "__main__":
    raise SystemExit(main())
