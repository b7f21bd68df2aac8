"""Run the guard: one serving core, the gRPC transport and, with `--http-address`, the HTTP one.

`whisper-guard serve` (or `python -m guard.server`) listens at once on every transport and
reports NOT_SERVING (gRPC health) / 503 (`/readyz`) while the model loads, then SERVING. Both
transports share one Guard and one admission pool: up to `max_concurrent` requests run inference
while `max_queued` more wait, in arrival order; anyone beyond that is refused at once
(RESOURCE_EXHAUSTED / 429). On SIGTERM (or SIGINT) both turn not-ready, new calls are refused
(UNAVAILABLE / 503), calls in flight get `grace_seconds` to finish (then are cancelled), and the
process exits 0. A second signal cuts the grace period short.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import types
import typing
from enum import Enum
from pathlib import Path

from pydantic import SecretStr, ValidationError

from guard import memory
from guard.config import Settings
from guard.serving.core import Serving
from guard.serving.tls import ServeError, read

log = logging.getLogger(__name__)


# ---- CLI -----------------------------------------------------------------------------------------


def _unwrap(annotation):
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; a flag given beats its `WHISPER_GUARD_*` env var."""
    for name, field in Settings.model_fields.items():
        ann = _unwrap(field.annotation)
        env = f"WHISPER_GUARD_{name.upper()}"
        default = field.get_default(call_default_factory=True)
        flags = ["--" + name.replace("_", "-")]
        kw: dict = {"dest": name, "default": argparse.SUPPRESS}
        if name == "max_concurrent":
            flags.append("--workers")
        if typing.get_origin(ann) is list:
            item = _unwrap(typing.get_args(ann)[0])
            if name == "auth_tokens":
                flags = ["--auth-token"]
                default = "none"
                env += ' (JSON list: \'["t1","t2"]\'; prefer it or --auth-token-file: flags show in `ps`)'
            kw.update(action="append", type=str if item in (SecretStr, Path) else item, metavar=name[:-1].upper())
        elif ann is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(ann, type) and issubclass(ann, Enum):
            kw["choices"] = [m.value for m in ann]
            default = default.value if isinstance(default, Enum) else default
        else:
            kw["type"] = str if ann in (Path, SecretStr) else ann
            kw["metavar"] = name.upper()
        text = f"{field.description or name.replace('_', ' ')} [env {env}; default {default}]"
        kw["help"] = text.replace("%", "%%")
        parser.add_argument(*flags, **kw)
    parser.add_argument("--auth-token-file", type=Path, default=None, metavar="PATH",
                        help="read accepted bearer tokens from a file, one per line (adds to --auth-token)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    token_file = getattr(args, "auth_token_file", None)
    if token_file:
        lines = [ln.strip() for ln in read(token_file, "token file").decode().splitlines()]
        tokens = [ln for ln in lines if ln and not ln.startswith("#")]
        if not tokens:
            raise ServeError(f"token file {str(token_file)!r} holds no token")
        values["auth_tokens"] = list(values.get("auth_tokens", [])) + tokens
    return Settings(**values)


def _configure_logging() -> None:
    """A server logs its start, readiness, drain and one line per request at INFO (env
    WHISPER_GUARD_LOG_LEVEL changes that), whatever the CLI set up for one-shot commands."""
    level = os.environ.get("WHISPER_GUARD_LOG_LEVEL", "INFO").upper()
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("guard").setLevel(level)


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then drain; 0 on a clean stop, 1 when it cannot start or load."""
    from guard.metrics import GuardMetrics, start_metrics_server
    from guard.transports.grpc.server import GuardServer

    metrics = GuardMetrics()
    serving = Serving(settings, metrics)
    servers = []
    try:
        servers.append(GuardServer(settings, serving=serving))
        if settings.http_address:
            from guard.transports.http.server import HttpServer

            proxy = {}
            if settings.upstream:  # the transcriptions endpoint becomes a verifying proxy
                from guard.transports.http.proxy import proxy_mode

                proxy = {"transcribe": proxy_mode(settings, metrics)}
            servers.append(HttpServer(settings, serving, **proxy))
        elif settings.upstream:
            raise ServeError("--upstream makes the HTTP transcriptions endpoint a proxy: give --http-address too")
        metrics_server = start_metrics_server(metrics, settings.metrics_address) if settings.metrics_address else None
    except (ServeError, ValueError, OSError) as e:
        log.error("cannot start: %s", e)
        for server in servers:
            server.stop(0)
        return 1
    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():
            log.warning("second %s: cancelling calls in flight now", signal.Signals(signum).name)
            serving.hard_stop.set()
        else:
            log.info("%s received: draining", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for server in servers:
            server.start()
        if metrics_server:
            log.info("metrics at %s", metrics_server.url)
        while not stop.wait(0.25):
            if serving.loaded.is_set() and serving.load_error:
                log.error("exiting with status 1 (health was NOT_SERVING): fix the model setup and restart")
                for server in servers:
                    server.stop(0)
                return 1
        serving.drain()
        for server in servers:
            server.close()
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if metrics_server:
            metrics_server.shutdown()


def run_serve(args: argparse.Namespace) -> int:
    """`whisper-guard serve`: settings from flags and env, then `serve`."""
    _configure_logging()
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        print(f"whisper-guard serve: invalid settings:\n{e}", file=sys.stderr)
        return 2
    except ServeError as e:
        print(f"whisper-guard serve: {e}", file=sys.stderr)
        return 2
    memory.limit_arenas(settings.malloc_arenas)  # a process setting: before the model's and the server's threads
    return serve(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guard.server", description="Serve whisper-guard over gRPC (and HTTP with --http-address).")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":  # run the importable module, not a __main__ copy (logger names, classes)
    from guard.server import main as _main

    raise SystemExit(_main())
