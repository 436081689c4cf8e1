"""Atelier: start the web UI and the REST API on one local server.

    .venv/bin/python app.py [flags]        (./launch.sh [flags] sets up .venv first)

This file only wires things together: flags and ``settings.json`` → ``Settings``, the model registry, the
pipeline manager, the Gradio UI and the REST routes on the same FastAPI app. It must work when started
directly with the venv's Python, so it depends on nothing that launch.sh puts in the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any

# Set before gradio / huggingface_hub are imported (they read these at import time). Atelier never downloads
# weights: models come from the models folder, configs are bundled. setdefault lets a user override them.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")

REPO_ROOT = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:  # started from elsewhere (python /path/to/app.py): find our packages
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
PORT_SEARCH_SPAN = 100  # how many ports after --port are tried when it is taken
SHARE_USER = "atelier"
SHARE_RELAY_TIMEOUT_S = 10.0
DEVICES = ("auto", "cuda", "mps", "cpu")  # same as pipelines.settings; kept here so --help imports nothing heavy
PRECISIONS = ("auto", "fp16", "bf16", "fp32")

# Settings fields whose saved value may be replaced by a flag; flag dest → Settings field.
FLAG_FIELDS = {
    "models_dir": "models_dir",
    "outputs_dir": "outputs_dir",
    "cache_dir": "cache_dir",
    "checkpoint": "checkpoint",
    "device": "device",
    "precision": "precision",
    "xformers": "xformers",
    "fast": "fast",
    "demo": "demo",
    "step_delay": "step_delay_s",
    "styles_file": "styles_file",
}
NOT_LOADED_FROM_FILE = ("from_cli", "settings_file", "styles_file", "demo", "step_delay_s")
# Saved Settings that are request defaults (pipelines.manager.REQUEST_DEFAULTS, not imported: it loads torch).
SAVED_REQUEST_DEFAULTS = ("deep_cache", "deep_cache_interval", "token_merging", "clip_skip", "emphasis")


class StartupError(Exception):
    """A problem with the flags or files given at start-up; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """Every flag of DESIGN.md's "app.py flags" table. Defaults are None so that given flags can be told apart."""
    p = argparse.ArgumentParser(
        prog="app.py",
        description="Atelier: a local Stable Diffusion studio (web UI + A1111-compatible REST API).",
        epilog="A flag given here always wins over the value saved in settings.json.",
    )
    net = p.add_argument_group("server")
    net.add_argument("--host", metavar="ADDR", help=f"bind address (default {DEFAULT_HOST})")
    net.add_argument("--listen", action="store_true", help="listen on all interfaces (= --host 0.0.0.0)")
    net.add_argument(
        "--port", type=int, metavar="N", help=f"port (default {DEFAULT_PORT}; the next free port when it is taken)"
    )
    net.add_argument(
        "--share",
        action="store_true",
        help=f"temporary public Gradio link; without --auth a password for user '{SHARE_USER}' is generated",
    )
    net.add_argument(
        "--auth", metavar="USER:PASS[,USER2:PASS2]", help="require a login for the UI and the API (HTTP Basic)"
    )
    net.add_argument(
        "--auth-file", metavar="FILE", help="logins, one user:password per line; blank lines and # comments ignored"
    )
    net.add_argument("--no-browser", action="store_true", help="do not open the browser tab")
    net.add_argument(
        "--cors-allow-origins", metavar="URL[,URL]",
        help="let pages of these origins (scheme://host:port) call the API from the browser; off by default",
    )
    net.add_argument(
        "--cors-allow-origins-regex", metavar="RE", help="let pages of origins matching RE call the API (see above)"
    )

    models = p.add_argument_group("models and files")
    models.add_argument(
        "--models-dir", metavar="DIR", help="models folder (default models/; an A1111 or ComfyUI models folder works)"
    )
    models.add_argument("--outputs-dir", metavar="DIR", help="where images are saved (default outputs/)")
    models.add_argument(
        "--cache-dir", metavar="DIR",
        help="model hashes, demo models and --fast's converted models (default .cache/; several GB with --fast)",
    )
    models.add_argument("--checkpoint", metavar="NAME", help="checkpoint to use by default, loaded at start")
    models.add_argument(
        "--settings-file", metavar="FILE", help="saved Settings (default settings.json beside the outputs folder)"
    )
    models.add_argument(
        "--styles-file", metavar="FILE",
        help="prompt styles, A1111's styles.csv format (default styles.csv beside the settings file)",
    )
    models.add_argument(
        "--demo", action="store_true", help="tiny random-weight models built locally (they draw noise): try the UI"
    )

    perf = p.add_argument_group("device and memory")
    perf.add_argument("--device", choices=DEVICES, help="device (default auto)")
    perf.add_argument("--precision", choices=PRECISIONS, help="dtype (default auto: fp16 on GPUs, fp32 on CPU)")
    low = perf.add_mutually_exclusive_group()
    low.add_argument("--medvram", action="store_true", help="start at the 'offload' memory mode (model CPU offload)")
    low.add_argument(
        "--lowvram", action="store_true", help="start at the 'sequential' memory mode (sequential CPU offload)"
    )
    perf.add_argument("--xformers", action="store_true", help="use xformers attention when installed")
    perf.add_argument("--fast", action="store_true", help="compiled fast path on NVIDIA GPUs")
    pool = p.add_argument_group("pool (several GPUs or machines, on Ray Serve; requirements-pool.txt)")
    pool.add_argument(
        "--pool", metavar="auto|ray://HOST:PORT",
        help="run the engine on a pool of replicas: 'auto' starts Ray here (one replica per GPU), ray://HOST:PORT "
             "joins a Ray cluster (one replica per GPU of the cluster); the UI and the API stay here",
    )
    pool.add_argument(
        "--pool-replicas", type=int, metavar="N",
        help="replicas to start (default: one per GPU; on a machine without a GPU 2, sharing its CPU cores)",
    )
    # Test-only: slows each denoising step so that a test can press Stop mid-run.
    perf.add_argument("--step-delay", type=float, metavar="SECONDS", help=argparse.SUPPRESS)
    return p


def parse_auth_entries(entries: list[str], source: str) -> dict[str, str]:
    """``user:password`` strings → {user: password}. The password may itself contain ':'."""
    users: dict[str, str] = {}
    for entry in entries:
        user, sep, password = entry.partition(":")
        user = user.strip()
        if not sep or not user or not password:
            raise StartupError(f"{source}: '{entry}' is not user:password (example: --auth artist:s3cret)")
        users[user] = password
    return users


def read_auth_file(path: Path) -> dict[str, str]:
    """Logins from a file: one ``user:password`` per line, blank lines and ``#`` comments ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StartupError(f"--auth-file {path}: cannot read it ({exc.strerror or exc}): check the path") from exc
    lines = [line.strip() for line in text.splitlines()]
    users = parse_auth_entries([line for line in lines if line and not line.startswith("#")], f"--auth-file {path}")
    if not users:
        raise StartupError(f"--auth-file {path}: no user:password line in it")
    return users


def collect_auth(args: argparse.Namespace) -> dict[str, str] | None:
    """Logins from --auth and --auth-file together; None when neither was given."""
    users: dict[str, str] = {}
    if args.auth:
        users.update(parse_auth_entries([e.strip() for e in args.auth.split(",") if e.strip()], "--auth"))
    if args.auth_file:
        users.update(read_auth_file(Path(args.auth_file).expanduser()))
    return users or None


def flags_given(args: argparse.Namespace) -> set[str]:
    """Names of the Settings fields set on the command line (they win over settings.json)."""
    given = {field for dest, field in FLAG_FIELDS.items() if getattr(args, dest) not in (None, False)}
    if args.medvram or args.lowvram:
        given.add("memory_mode")
    return given


def default_settings_file(outputs_dir: Path) -> Path:
    """settings.json lives beside the outputs folder (the repo root by default)."""
    return outputs_dir.parent / "settings.json"


def load_settings_file(path: Path) -> dict[str, Any]:
    """Saved values, or {} when there is no file. A broken file is reported and ignored, never fatal."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"WARNING: {path} could not be read ({exc}); starting with default settings.", flush=True)
        return {}
    if not isinstance(data, dict):
        print(f"WARNING: {path} does not hold a JSON object; starting with default settings.", flush=True)
        return {}
    return data


def valid_saved_values(saved: dict[str, Any]) -> dict[str, Any]:
    """Drop saved values that cannot be right (unknown choices), saying so, so that a hand-edited file cannot
    stop the start."""
    from pipelines.errors import InvalidRequest
    from pipelines.request import GenerationRequest
    from pipelines.settings import DEVICES as SETTING_DEVICES
    from pipelines.settings import MEMORY_MODES
    from pipelines.settings import PRECISIONS as SETTING_PRECISIONS

    choices = {"device": SETTING_DEVICES, "precision": SETTING_PRECISIONS, "memory_mode": MEMORY_MODES}
    kept = {}
    for name, value in saved.items():
        if name in NOT_LOADED_FROM_FILE:
            continue
        if name in choices and value not in choices[name]:
            print(f"WARNING: settings file: {name}={value!r} is not one of {', '.join(choices[name])}; ignored.")
            continue
        if name in SAVED_REQUEST_DEFAULTS:  # the ranges a request is held to
            try:
                GenerationRequest.create(**{name: value})
            except InvalidRequest as exc:
                print(f"WARNING: settings file: {name}={value!r}: {str(exc).rstrip('.')}; ignored.")
                continue
        kept[name] = value
    return kept


def build_settings(args: argparse.Namespace):  # -> pipelines.settings.Settings
    """Flags + settings.json → Settings, with command-line flags winning over saved values."""
    from pipelines.settings import Settings

    settings = Settings()
    given = flags_given(args)
    if args.models_dir:
        settings.models_dir = Path(args.models_dir).expanduser().resolve()
    if args.outputs_dir:
        settings.outputs_dir = Path(args.outputs_dir).expanduser().resolve()
    if args.cache_dir:
        settings.cache_dir = Path(args.cache_dir).expanduser().resolve()
    if args.styles_file:
        settings.styles_file = Path(args.styles_file).expanduser().resolve()
    for dest in ("checkpoint", "device", "precision"):
        if getattr(args, dest):
            setattr(settings, dest, getattr(args, dest))
    settings.xformers = args.xformers
    settings.fast = args.fast
    settings.demo = args.demo
    if args.medvram:
        settings.memory_mode = "offload"
    if args.lowvram:
        settings.memory_mode = "sequential"
    if args.step_delay is not None:
        settings.step_delay_s = max(0.0, args.step_delay)
    settings.from_cli = given

    settings_file = Path(args.settings_file).expanduser() if args.settings_file else None
    settings.settings_file = (settings_file or default_settings_file(settings.outputs_dir)).resolve()
    settings.update(valid_saved_values(load_settings_file(settings.settings_file)), respect_cli=True)
    return settings


def port_is_free(host: str, port: int) -> bool:
    """True when a server could bind host:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def find_free_port(host: str, start: int, span: int = PORT_SEARCH_SPAN) -> int:
    """The first free port from ``start`` on (as A1111 users expect: 7860, then 7861, ...)."""
    for port in range(start, min(start + span, 65536)):
        if port_is_free(host, port):
            return port
    raise StartupError(f"ports {start}-{start + span - 1} are all taken on {host}: choose another with --port N")


def share_relay_reachable(timeout: float = SHARE_RELAY_TIMEOUT_S) -> bool:
    """Whether Gradio's share relay answers. Asked first so that a machine offline gets one clear warning
    instead of Gradio's long message about downloading its tunnel binary."""
    if os.environ.get("GRADIO_SHARE_SERVER_ADDRESS"):  # a custom relay: let Gradio try it
        return True
    import httpx
    from gradio.networking import GRADIO_API_SERVER

    # The tests point this at a closed local port, so that they never open a real public link.
    check_url = os.environ.get("ATELIER_SHARE_RELAY_CHECK_URL", GRADIO_API_SERVER)
    try:
        return httpx.get(check_url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def display_url(host: str, port: int) -> str:
    """The URL a person on this machine opens (0.0.0.0 is not an address a browser can visit)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def build_manager(settings, pool: str | None = None, pool_replicas: int | None = None):  # -> interface.Engine
    """Registry (plus the demo models with --demo) and the pipeline manager, started; with ``pool`` (--pool) the
    pool's engine, whose replicas run the jobs (Ray is imported only then)."""
    from pipelines.manager import PipelineManager
    from pipelines.registry import ModelRegistry

    extra_dirs: list[Path] = []
    if settings.demo:
        from pipelines.demo import ensure_demo_models

        print("Preparing the demo models (tiny random weights: they draw noise)...", flush=True)
        extra_dirs.append(Path(ensure_demo_models(settings.cache_dir)))
    registry = ModelRegistry(settings.models_dir, settings.cache_dir, extra_dirs=tuple(extra_dirs))
    if pool:
        manager = build_pool_engine(settings, registry, pool, pool_replicas, extra_dirs)
    else:
        manager = PipelineManager(settings, registry)
    manager.start()
    return manager


def build_pool_engine(settings, registry, address: str, replicas: int | None, extra_dirs: list[Path]):
    """Start or join the Ray cluster and its replicas (``--pool``); the front's engine over them."""
    if replicas is not None and replicas < 1:
        raise StartupError("--pool-replicas must be 1 or more")
    if address != "auto" and not (address.startswith("ray://") or ":" in address):
        raise StartupError(f"--pool {address}: give 'auto' or the cluster's address, ray://HOST:PORT")
    if address != "auto":
        from pipelines.pool import use_cluster_token

        use_cluster_token()  # before Ray is imported
    try:
        from pipelines.pool.cluster import PoolCluster
    except ImportError as exc:
        raise StartupError(f"--pool needs Ray ({exc}): start with ./launch.sh --pool ..., which installs "
                           "requirements-pool.txt, or pip install -r requirements-pool.txt") from None
    from pipelines.pool.engine import PoolEngine

    config = {"settings": settings.to_json(), "demo": settings.demo, "step_delay_s": settings.step_delay_s,
              "styles_file": str(settings.styles_file) if settings.styles_file else None,
              "extra_dirs": [str(d) for d in extra_dirs]}
    cluster = PoolCluster(address, replicas, config)
    where = "here" if address == "auto" else f"on {address}"
    print(f"Starting the pool {where} (Ray Serve)...", flush=True)
    try:
        plan = cluster.start()
    except Exception as exc:
        cluster.close()
        raise StartupError(f"--pool {address}: the pool could not start ({type(exc).__name__}: {exc})") from None
    each = "one GPU each" if plan.gpus else f"{plan.threads} CPU thread(s) each"
    print(f"Pool ready: {plan.replicas} replica(s), {each}.", flush=True)
    return PoolEngine(settings, registry, cluster)


def preload_checkpoint(manager, name: str) -> None:
    """Load ``name`` in the manager's worker while the server starts (the first image waits only for the rest);
    say when it is ready. A failure is logged by the manager, and the first request tries the load again."""
    # transformers' and diffusers' lazy modules are not safe to import from two threads at once: a load in the
    # worker beside the UI build once failed with "cannot import name 'PreTrainedModel'". Import them here first.
    import diffusers.loaders  # noqa: F401
    import transformers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm  # noqa: F401

    transformers.PreTrainedModel, transformers.CLIPTextModel  # noqa: B018 - resolve the lazy attributes now
    job = manager.preload(name)
    if job is None:
        return
    print(f"Loading {job.request.checkpoint} in the background...", flush=True)

    def report() -> None:
        try:
            result = job.wait()
        except Exception:  # logged by the manager (or shutting down)
            return
        print(f"Loaded {result.checkpoint} in {(job.finished or 0) - (job.started or 0):.1f} s.", flush=True)

    threading.Thread(target=report, name="atelier-preload", daemon=True).start()


def launch_server(demo, host: str, port: int, auth: dict[str, str] | None, share: bool):
    """Start Gradio without blocking; retry on the next port if another program took ours meanwhile."""
    for _ in range(5):
        try:
            return demo.launch(
                server_name=host,
                server_port=port,
                share=share,
                auth=list(auth.items()) if auth else None,
                auth_message="Atelier: log in with the user and password given at start-up.",
                prevent_thread_lock=True,
                inbrowser=False,
                quiet=True,  # we print the URL line ourselves, exactly once
                show_error=True,
            )
        except OSError:
            port = find_free_port(host, port + 1)
    raise StartupError(f"could not bind a port on {host}: choose another with --port N")


def wait_until_stopped() -> None:
    """Keep the main thread alive until Ctrl+C or SIGTERM."""
    stop = threading.Event()
    # Both set explicitly: a process started in the background by a shell inherits SIGINT as ignored.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build everything, serve until stopped. Returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return serve(args)
    except StartupError as exc:
        print(f"Atelier: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("Stopped.", flush=True)
        return 130
    except Exception as exc:  # an AtelierError met while starting: one line that says what to do, no traceback
        from pipelines.errors import AtelierError

        if not isinstance(exc, AtelierError):
            raise
        print(f"Atelier: {exc}", file=sys.stderr, flush=True)
        return 1


def cors_policy(args: argparse.Namespace):  # -> api.CorsPolicy
    """The other origins whose pages may call the API (``--cors-allow-origins``, ``--cors-allow-origins-regex``)."""
    from api.cors import CorsPolicy

    try:
        return CorsPolicy.from_flags(args.cors_allow_origins, args.cors_allow_origins_regex)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def serve(args: argparse.Namespace) -> int:
    """The body of main(): settings → manager → UI → server → REST routes → wait."""
    auth = collect_auth(args)
    cors = cors_policy(args)
    host = "0.0.0.0" if args.listen else (args.host or DEFAULT_HOST)
    port = find_free_port(host, args.port or DEFAULT_PORT)
    if args.port and port != args.port:
        print(f"Port {args.port} is taken: using {port}.", flush=True)
    settings = build_settings(args)

    share = bool(args.share)
    if share and not auth:
        # A public link to a GPU must never be open to anyone who finds it.
        auth = {SHARE_USER: secrets.token_urlsafe(12)}
        print(f"Share login: user {SHARE_USER}, password {auth[SHARE_USER]}", flush=True)
    if host != DEFAULT_HOST and host not in ("localhost", "::1") and not auth:
        print(f"WARNING: listening on {host} without --auth: anyone on your network can use this GPU.", flush=True)
    if share and not share_relay_reachable():
        print(
            "WARNING: --share: Gradio's share relay cannot be reached from this machine (offline or blocked), "
            "so there is no public link; the local server keeps running.",
            flush=True,
        )
        share = False

    manager = build_manager(settings, args.pool, args.pool_replicas)
    try:
        import ui

        demo = ui.build_ui(manager, settings)
        if args.checkpoint:  # after the UI build, whose imports must not race the load's (see preload_checkpoint)
            preload_checkpoint(manager, settings.checkpoint)
        app, _local_url, share_url = launch_server(demo, host, port, auth, share)
        import api

        api.mount(app, manager, settings, auth, cors=cors, flags=vars(args))
        port = demo.server_port
        url = display_url(host, port)
        print(f"Running on local URL: {url}", flush=True)
        if share and not share_url:  # Gradio printed its own reason; say what it means for us
            print("WARNING: --share: the public link could not be made; the local server keeps running.", flush=True)
        if not args.no_browser:
            webbrowser.open(url)
        wait_until_stopped()
        print("Shutting down...", flush=True)
        demo.close()
    finally:
        manager.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
