"""A command for tests/unit/test_forked_processes.py, run as ``python -m
tests.unit.forked_child ARGS``: prints what it was given (a variable, its working
directory, its arguments) on stdout and a line on stderr, then exits with the code its
first argument names, or sleeps (``sleep``) until a signal ends it."""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    print(f"value={os.environ.get('CHILD_VALUE')} cwd={os.getcwd()} argv={sys.argv[1:]}")
    print("to stderr", file=sys.stderr)
    sys.stdout.flush()
    if sys.argv[1:2] == ["sleep"]:
        time.sleep(60)
    return int(sys.argv[1]) if sys.argv[1:2] and sys.argv[1].isdigit() else 0


if __name__ == "__main__":
    sys.exit(main())
