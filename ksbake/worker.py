"""Entry point of worker processes (see ``ksbake.sandbox``).

Usage: ``python -m ksbake.worker FN ARGS RESULT``.

Imports ``FN`` ("module:function"), calls it with the JSON arguments, writes the JSON result or
the error. Tracebacks are printed only for unexpected exceptions (bugs) or with KSBAKE_DEBUG=1.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

from ksbake.errors import KsbakeError
from ksbake.run import setup_logging


def main(argv: list[str]) -> int:
    setup_logging()
    function, args_file, result_file = argv
    module_name, _, attr = function.partition(":")
    with open(args_file) as f:
        args = json.load(f)
    try:
        fn = getattr(importlib.import_module(module_name), attr)
        result = {"ok": fn(**args)}
        code = 0
    except KsbakeError as exc:
        if os.environ.get("KSBAKE_DEBUG"):
            traceback.print_exc()
        result = {"error": {"class": type(exc).__name__, "message": exc.message, "hint": exc.hint}}
        code = 3
    except KeyboardInterrupt:
        result = {"error": {"class": "BuildError", "message": "interrupted"}}
        code = 130
    except Exception as exc:  # a bug: show where, but still end with one line
        traceback.print_exc()
        result = {"error": {"class": "BuildError", "message": f"internal error: {exc!r}"}}
        code = 4
    with open(result_file, "w") as f:
        json.dump(result, f)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
