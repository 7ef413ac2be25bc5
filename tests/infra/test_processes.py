"""lfw.infra.processes: one way to run, stop and tail the processes lfw starts, tested on real processes.

The case that matters: a launcher that exits on Ctrl-C while a worker of its group ignores it. Stopping
only until the launcher is gone (what `lfw run` once did) leaves that worker running; the group must be
empty when stop_group returns.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from lfw.infra.processes import (
    group_members,
    interrupted_by,
    run_logged,
    start_group,
    stop_group,
    tail,
)

# A leader that starts a worker ignoring SIGINT and SIGTERM, prints its pid, and dies on SIGINT itself.
STUBBORN = """
import signal, subprocess, sys, time
code = "import signal as s, time; s.signal(s.SIGINT, s.SIG_IGN); s.signal(s.SIGTERM, s.SIG_IGN); time.sleep(300)"
child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(300)
"""
SHORT = ((signal.SIGINT, 2.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0))


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed child of a dead leader may linger as one)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def started(code: str) -> tuple[object, int]:
    proc = start_group([sys.executable, "-c", code])
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    time.sleep(0.3)  # the worker has installed its handlers
    return proc, child


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_stopping_a_group_kills_children_that_ignore_the_signals(tmp_path):
    proc, child = started(STUBBORN)
    assert alive(child) and child in group_members(proc.pid)
    sent = []
    stop_group(proc, SHORT, on_escalate=sent.append)
    assert proc.returncode is not None
    assert not alive(child) and group_members(proc.pid) == []
    assert sent == [signal.SIGTERM, signal.SIGKILL]  # SIGINT ended the leader only; SIGTERM changed nothing


def test_a_group_that_stops_on_sigint_gets_nothing_else():
    proc = start_group([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(300)"])
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    sent = []
    stop_group(proc, SHORT, on_escalate=sent.append)
    assert sent == [] and proc.returncode == -signal.SIGINT  # Python's exit on an unhandled KeyboardInterrupt
    assert group_members(proc.pid) == []


def test_run_logged_logs_every_line_and_leaves_no_process_behind(tmp_path):
    code = (
        "import subprocess, sys; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); "
        "print(child.pid); print('done'); sys.exit(3)"
    )
    seen: list[str] = []
    log = tmp_path / "logs" / "step.log"
    cmd = [sys.executable, "-c", code]
    assert run_logged(cmd, dict(os.environ), log, on_line=seen.append) == 3
    child = int(seen[0])
    assert seen[1:] == ["done\n"]
    assert log.read_text().splitlines() == ["$ " + " ".join(cmd), str(child), "done"]
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child)  # the leader's background child went with its group


def test_an_exception_while_running_stops_the_group_and_propagates(tmp_path):
    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    proc_code = "import time; print('ready', flush=True); time.sleep(300)"
    started_at = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_logged([sys.executable, "-c", proc_code], dict(os.environ), tmp_path / "x.log", on_line=interrupt)
    assert time.monotonic() - started_at < 60  # stopped, not waited for


def test_a_signal_named_becomes_a_keyboard_interrupt_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), interrupted_by(signal.SIGTERM):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    try:
        with interrupted_by(signal.SIGHUP):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_tail_returns_the_last_lines(tmp_path):
    log = tmp_path / "a.log"
    log.write_text("".join(f"line {i}\n" for i in range(1, 101)) + "INFO 01-01 noise\n")
    assert tail(log, 3) == "line 99\nline 100\nINFO 01-01 noise"
    assert tail(log, 2, skip=re.compile(r"^INFO")) == "line 99\nline 100"
    assert tail(tmp_path / "missing.log") == "(no log)"
