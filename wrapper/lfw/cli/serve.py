"""`lfw serve`: vLLM's OpenAI-compatible server on 127.0.0.1 by default, health-checked."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lfw.cli.options import vllm_python_option

if TYPE_CHECKING:
    from rich.console import Console

    from lfw.post.serve import ServeOptions, VLLMServer


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("model")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind; anything but loopback exposes the model to the network.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=None, help="GPUs per model replica.")
@click.option("--max-model-len", type=click.IntRange(min=1), default=None, help="Context length to serve.")
@click.option(
    "--api-key-env",
    default=None,
    metavar="NAME",
    help="Require the API key held in environment variable NAME (the key never goes on a command line).",
)
@click.option("--served-model-name", default=None, help="Model name clients use (default: the model path).")
@vllm_python_option
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Server log file, appended to (default: a new file in ~/.local/state/lfw/serve, printed at start).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=900,
    show_default=True,
    help="Seconds to wait for the server to become ready.",
)
@click.option("--dry-run", is_flag=True, help="Print the command and environment; start nothing.")
def serve(
    model: str,
    vllm_args: tuple[str, ...],
    host: str,
    port: int,
    tensor_parallel_size: int | None,
    max_model_len: int | None,
    api_key_env: str | None,
    served_model_name: str | None,
    vllm_python: str | None,
    log_path: Path | None,
    timeout: float,
    dry_run: bool,
) -> None:
    """Serve MODEL (an export folder, a run directory with an export, or a hub id) with vLLM.

    Waits until the server answers /health, lists the model and generates a token, then prints a curl
    example. The chat template arguments recorded by `lfw export` (thinking mode) are vLLM's defaults.
    Ctrl-C stops the server and all its processes. Arguments after MODEL (or after --) go to vLLM.

    \b
    Examples:
      lfw serve runs/tiny-cpu-demo/20250101-120000/export
      lfw serve merged/ --api-key-env MY_KEY --port 8001     (MY_KEY exported beforehand)
      lfw serve merged/ --dry-run -- --dtype float32
    """
    from rich.console import Console

    from lfw.infra.vllm_env import vllm_python as find_vllm_python
    from lfw.post.serve import VLLMServer, make_options, new_log

    console = Console()
    options = make_options(
        model,
        host=host,
        port=port,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        api_key_env=api_key_env,
        served_model_name=served_model_name,
        extra_args=vllm_args,
    )
    _warn(options, console)
    if dry_run:
        _dry_run(options, vllm_python, console)
        return
    server = VLLMServer(options, find_vllm_python(vllm_python), log_path or new_log(port))
    _serve_until_stopped(server, timeout, console)


def _warn(options: ServeOptions, console: Console) -> None:
    """Notes on the model (lineage, run directory) and a warning when the server is reachable from the network."""
    from lfw.post.serve import LOOPBACK

    for note in options.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if options.host not in LOOPBACK:
        console.print(
            f"[yellow]warning:[/] binding {options.host}: the server is reachable from the network"
            + ("" if options.api_key_env else "; consider --api-key-env (vLLM's key guards /v1 only)")
        )


def _dry_run(options: ServeOptions, vllm_python: str | None, console: Console) -> None:
    """The environment lfw sets (the key by its source only) and vLLM's command line; nothing starts."""
    from lfw.infra.errors import UserError
    from lfw.infra.vllm_env import vllm_python as find_vllm_python
    from lfw.post.serve import build_command, build_env, describe_env

    try:
        python = find_vllm_python(vllm_python)
    except UserError as err:
        console.print(f"[yellow]warning:[/] {err.render()}", highlight=False)
        python = "python"
    env = build_env(options)
    for line in describe_env(options, env):
        console.print(f"env {line}", highlight=False)
    console.print(shlex.join(build_command(python, options)), highlight=False, soft_wrap=True)


def _serve_until_stopped(server: VLLMServer, timeout: float, console: Console) -> None:
    """Start the server, say where it answers once it really serves, and stop its whole group on Ctrl-C,
    kill or hang-up (a SIGTERM/SIGHUP of lfw must not orphan vLLM; nohup's ignored SIGHUP stays ignored)."""
    from lfw.infra.errors import UserError
    from lfw.infra.processes import interrupted_by

    log_path = server.log_path
    console.print(f"starting vLLM for {server.options.model} on {server.base_url} (log: {log_path})", highlight=False)
    with interrupted_by(signal.SIGTERM, signal.SIGHUP):
        server.start()
        try:
            server.wait_ready(timeout)
            console.print(
                f"[green]ready[/] in {server.started_seconds:.0f} s: model {server.model_id!r} at "
                f"{server.base_url}/v1  (pid {server.pid})",
                highlight=False,
            )
            console.print(f"  {server.curl_example()}", highlight=False, soft_wrap=True)
            console.print(f"  logs: tail -f {log_path}    stop: Ctrl-C", highlight=False)
            assert server.proc is not None
            code = server.proc.wait()
            raise UserError(f"vLLM exited by itself (code {code}); see {log_path}")
        except KeyboardInterrupt:
            console.print("stopping vLLM and all its processes")
        finally:
            server.stop()
