"""One way to run, stop and tail the processes lfw starts (training stages, export, eval workers, vLLM).

Every child runs in a session of its own, so its whole tree (torchrun and its workers, vLLM's engine
processes) is one process group: a Ctrl-C in the terminal reaches lfw only, and lfw then stops the group in
order, SIGINT (a clean shutdown) then SIGTERM then SIGKILL, until no process of the group is left: a
launcher that exits while its workers ignore the signal does not leave them behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# (signal, seconds to wait for the group to go) in the order sent; SIGINT first lets vLLM and torchrun shut down.
INTERRUPT_FIRST: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, 15.0),
    (signal.SIGTERM, 10.0),
    (signal.SIGKILL, 5.0),
)
TERMINATE_FIRST: tuple[tuple[signal.Signals, float], ...] = ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0))
_POLL = 0.2


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_group(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, stdout: IO[Any] | int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """Start `cmd` as the leader of a new session (its own process group), stdin closed, stderr into stdout.

    With the default stdout the output is a text pipe read line by line (undecodable bytes replaced). The group
    gets SIGINT's default action even where lfw itself ignores it (a background job of a script), because
    `stop_group` sends SIGINT first for a clean shutdown.
    """
    inherits_ignored_sigint = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    return subprocess.Popen(
        list(cmd),
        preexec_fn=_default_sigint if inherits_ignored_sigint else None,
        env=None if env is None else dict(env),
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
        errors="replace",
        bufsize=1,
    )


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc; empty once the group is fully gone."""
    proc = Path("/proc")
    if not proc.is_dir():  # no /proc (macOS): a signal 0 tells whether any process of the group is left
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "stat").read_text()
        except OSError:
            continue
        fields = line[line.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _gone(proc: subprocess.Popen[Any], seconds: float) -> bool:
    """Wait up to `seconds` until the leader has exited (reaped) and no process of its group is left."""
    end = time.monotonic() + seconds
    while True:
        if proc.poll() is not None and not group_members(proc.pid):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(_POLL)


def stop_group(
    proc: subprocess.Popen[Any],
    ladder: Sequence[tuple[signal.Signals, float]] = INTERRUPT_FIRST,
    on_escalate: Callable[[signal.Signals], None] | None = None,
) -> None:
    """Signal the whole group of `proc`, each signal of `ladder` in turn, until the group is gone.

    `on_escalate(sig)` is called before each signal after the first (the group outlived the previous one).
    """
    for step, (sig, grace) in enumerate(ladder):
        if step and on_escalate is not None:
            on_escalate(sig)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if _gone(proc, grace):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def kill_leftovers(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL whatever the group still holds once its leader is done (an engine process it left behind)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_logged(
    cmd: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    on_line: Callable[[str], None] | None = None,
    ladder: Sequence[tuple[signal.Signals, float]] = INTERRUPT_FIRST,
) -> int:
    """Run `cmd` in its own group, every output line into `log_path` (after a ``$ cmd`` line) and to `on_line`.

    Returns the exit code. Any exception while it runs (Ctrl-C) stops the whole group before it propagates;
    after the leader exits, anything left in its group is killed.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = start_group(cmd, env)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if on_line is not None:
                    on_line(line)
            return proc.wait()
        except BaseException:
            stop_group(proc, ladder)
            raise
        finally:
            kill_leftovers(proc)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def interrupted_by(*signals: signal.Signals) -> Iterator[None]:
    """Turn these signals into a KeyboardInterrupt while the block runs, so a `kill` of lfw (a scheduler's
    cancel, a closed terminal) stops the children's groups as Ctrl-C does, instead of orphaning them.

    Only in the main thread (Python allows handlers nowhere else); a signal ignored on entry (nohup) stays so.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in signals if signal.getsignal(sig) is not signal.SIG_IGN}
    for sig in previous:
        signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def tail(path: Path, lines: int = 30, skip: re.Pattern[str] | None = None) -> str:
    """The last `lines` lines of a log (those matching `skip` left out first), or "(no log)" when unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    if skip is not None:
        text = [line for line in text if not skip.search(line)]
    return "\n".join(text[-lines:])
