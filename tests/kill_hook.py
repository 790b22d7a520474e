"""Run a fusynth command and SIGKILL it at a chosen file-system commit, for the fault tests.

    python tests/kill_hook.py RECORD KILL -- -m fusynth.cli generate ...
    python tests/kill_hook.py RECORD KILL -- recipes/train_lora.py --output_dir ...

Every rename fusynth commits a file or folder with goes through ``os.replace``; this
wrapper counts them. ``KILL`` says before which one the process kills itself with
SIGKILL (as ``kill -9`` would, no clean-up of any kind):

* ``none``: never; the run's renames and the time of its first one are written, as
  JSON, to ``RECORD`` at exit (what the test measures the uninterrupted run with);
* ``N``: before the N-th rename;
* ``N:TEXT``: before the N-th rename whose source path contains ``TEXT`` (e.g. the
  final write's temporary folder).

Nothing in fusynth knows about this wrapper: the kill comes from outside the library.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import sys
import time

started = time.perf_counter()
record, kill, sep, *command = sys.argv[1:]
assert sep == "--", "usage: kill_hook.py RECORD KILL -- COMMAND..."
nth, _, needle = kill.partition(":")
renames: list[tuple[float, str]] = []
_replace = os.replace


def _counting_replace(src, dst, *args, **kwargs):
    source = os.fspath(src)
    if nth != "none":
        matching = [s for _, s in renames if needle in s] if needle else renames
        if needle in source and len(matching) + 1 == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
    renames.append((time.perf_counter() - started, source))
    return _replace(src, dst, *args, **kwargs)


os.replace = _counting_replace


@atexit.register
def _write_record() -> None:
    if nth == "none":
        first = renames[0][0] if renames else None
        with open(record, "w") as fh:
            json.dump({"renames": [s for _, s in renames], "first_rename_s": first}, fh)


if command[0] == "-m":
    sys.argv = [command[1], *command[2:]]
    runpy.run_module(command[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = command
    sys.path.insert(0, os.path.dirname(os.path.abspath(command[0])))
    runpy.run_path(command[0], run_name="__main__")
