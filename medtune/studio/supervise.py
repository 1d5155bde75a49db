"""``python -m medtune.studio.supervise STATUS_FILE -- COMMAND...``: run one attempt of a studio job and
record how it ended.

The studio starts this in a new session (its own process group) with the job's command as its
child, so the studio can be closed, reopened or restarted while the job runs. Stopping a job sends
SIGTERM to the whole group: the command (``medtune train``) handles it (finish the step, save a
complete checkpoint, exit with its preemption status); this process only waits, then writes
``{"returncode", "started", "ended"}`` to ``STATUS_FILE`` (written to a temporary file and renamed,
so a reader never sees half of it). A negative return code is the signal that ended the command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def supervise(status_file: Path, command: list[str]) -> int:
    """Run ``command``, wait for it (through signals sent to the group) and write ``status_file``.

    Returns:
        The command's return code (negative: killed by that signal).
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        # a handler, not SIG_IGN: the child starts with default dispositions, so it still receives the stop
        signal.signal(sig, lambda *_: None)
    started = time.time()
    child = subprocess.Popen(command)
    returncode = child.wait()
    status = {"returncode": returncode, "started": started, "ended": time.time(), "pid": child.pid}
    tmp = status_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(status), encoding="utf-8")
    os.replace(tmp, status_file)
    return returncode


def main(argv: list[str]) -> int:
    """Entry point: ``STATUS_FILE -- COMMAND...``."""
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m medtune.studio.supervise STATUS_FILE -- COMMAND...", file=sys.stderr)
        return 2
    supervise(Path(argv[0]), argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
