"""The daemon: one event loop running the supervisor and the proxy; signals; drain.

May import: config, engine, errors, files, gpu, keys, observe, procs, proxy, proxy.conns,
report, stack, state, supervisor, survey, usage.
Run as `python -m llmctl.daemon [--config FILE]` (what `llmctl up` starts, detached;
it logs to logs/daemon.log, rotated, and anything printed lands in logs/daemon.out)
or in the foreground by `llmctl up --foreground` (logs on stderr).

Order: take the lock, plan, bind the proxy (so /health and /ready answer at
once), start backends one by one, serve. SIGTERM or SIGINT: the proxy stops
accepting and drains in-flight requests, then every backend group is stopped.
stack.json reports every state change; it is removed on a clean exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import config as cfgmod
from . import engine, gpu, keys, procs, state, usage
from .errors import LlmctlError
from .files import private_dir
from .observe import Observer
from .report import StackReport
from .supervisor import Backend, ManagedBackend, RemoteBackend, Supervisor
from .survey import fim_family, survey

log = logging.getLogger("llmctl.daemon")

# Exit codes, as `llmctl up` and systemd see them.
EXIT_OK = 0
EXIT_FAILED = 1  # the config, the proxy's port or the plan stopped the daemon
EXIT_LOCKED = 3  # another daemon holds the lock


def start_key(m: cfgmod.ModelConfig) -> str:
    """What `starts.json` remembers a start time under: the same model at the same place."""
    return f"{m.key}:{m.source}"


def devices_of(p: Any) -> tuple[str, ...]:
    """The devices a backend's start profiles and holds: its cards, or the CPU."""
    if p.device == "cuda":
        return tuple(f"cuda:{i}" for i in p.devices) or ("cuda:0",)
    return ("cpu",)


def build_backends(cfg: cfgmod.Config, on_change: Callable[[], None]
                   ) -> tuple[list[Backend], str]:
    """The config, read straight down: survey (readings, folders, plans) → argv → backend."""
    s = survey(cfg)
    backends: list[Backend] = []
    for m in cfg.models:
        if not m.managed:
            backends.append(RemoteBackend(m, fim=fim_family(m, None), abilities=s.abilities[m.key],
                                          on_change=on_change))
            continue
        p, folder = s.plans[m.key], s.folders[m.key]
        able = s.abilities[m.key]
        b = ManagedBackend(m, engine.command(cfg, m, p, str(folder or m.source), abilities=able),
                           cfgmod.logs_dir() / f"{m.key}.log", planned_bytes=p.planned_bytes,
                           planned_kv_tokens=p.kv_tokens, devices=devices_of(p),
                           expected_start_s=state.previous_start(start_key(m)),
                           fim=fim_family(m, folder), abilities=able, on_change=on_change)
        if folder is None:
            b.fail(f"{m.source} is not pulled; run `llmctl pull`")
        backends.append(b)
    return backends, s.device


class Daemon:
    def __init__(self, cfg: cfgmod.Config) -> None:
        self.cfg = cfg
        self.started_at = time.time()
        self.backends: list[Backend] = []
        self.device = "?"
        self.error: str | None = None
        self.digest = cfgmod.digest(cfg)
        self.toml = cfgmod.to_toml(cfg)  # masked: what `up` shows when the config changed
        self._recorded: dict[str, float] = {}
        self._keys: dict[str, str] = {}
        self.boot_id = procs.boot_id()

    def changed(self) -> None:
        """A backend changed state: remember new start times, then report."""
        for b in self.backends:
            if isinstance(b, ManagedBackend) and b.last_start_s and \
                    self._recorded.get(b.key) != b.last_start_s:
                self._recorded[b.key] = b.last_start_s
                state.record_start(start_key(b.model), b.last_start_s)
        self.report()

    def report(self) -> None:
        keys_now = {b.key: b.upstream_auth.decode().removeprefix("Bearer ")
                    for b in self.backends
                    if isinstance(b, ManagedBackend) and b.upstream_auth}
        if keys_now != self._keys:
            self._keys = keys_now
            state.write_json(state.path(state.BACKEND_KEYS), keys_now)
        state.write_stack(StackReport(
            pid=os.getpid(), started_at=self.started_at, device=self.device,
            boot_id=self.boot_id, proxy_url=self.cfg.proxy_url,
            config_path=str(self.cfg.path) if self.cfg.path else None,
            log=str(cfgmod.logs_dir() / "daemon.log"), error=self.error,
            config_digest=self.digest, config_toml=self.toml,
            backends={b.key: b.snapshot() for b in self.backends}))

    async def serve(self) -> int:
        import uvicorn

        from .proxy import Proxy

        self.backends, self.device = build_backends(self.cfg, self.changed)
        host, port = self.cfg.proxy.host, self.cfg.proxy.port
        if not procs.port_free(port, host if host not in ("", "::") else "0.0.0.0"):
            self.error = f"proxy port {port} is in use by another process"
            self.report()
            log.error(self.error)
            return EXIT_FAILED
        self.report()
        from .stack import status_report

        supervisor = Supervisor(self.backends, drain_seconds=self.cfg.proxy.drain_seconds,
                                max_queue=self.cfg.proxy.max_queue_per_model)
        proxy = Proxy(self.backends, self.cfg.proxy, supervisor,
                      status=lambda: status_report().as_dict(),
                      keys_path=keys.path(), machine=Observer(self.backends).text)
        server = uvicorn.Server(uvicorn_config(proxy, host, port, self.cfg.proxy.drain_seconds,
                                               self.cfg.proxy))

        async def start_backends() -> None:
            # Wait until the proxy listens, so `up` can watch /ready from the start.
            while not server.started and not server.should_exit:
                await asyncio.sleep(0.05)
            await supervisor.run()

        async def write_usage() -> None:
            # The usage tally to SQLite, off the request path. A write that fails (the
            # file locked by a reader, no descriptors left) keeps its batch for the next.
            batch = proxy.ledger.tally.take()
            try:
                await asyncio.to_thread(usage.write, batch)
            except BaseException:
                proxy.ledger.tally.put_back(batch)
                raise

        reported: list[Any] = []

        async def report_in_flight() -> None:
            # States are reported as they change; requests in flight (and the time of the
            # last one, for idle stops) change per request, so they are written at most
            # once a second, and only when they moved.
            now = [(b.in_flight, b.queued, b.last_request_at) for b in self.backends]
            if now != reported:
                reported[:] = now
                self.report()

        # uvicorn turns SIGINT/SIGTERM into "stop accepting, drain, return", then raises the
        # signal again with the handler it found: make that one harmless, or the default
        # action would kill the daemon before it stops the backends.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: None)
        starter = asyncio.create_task(start_backends())
        reporter = asyncio.create_task(every(1.0, "the in-flight report", report_in_flight))
        keeper = asyncio.create_task(every(1.0, "the usage write", write_usage))
        # The web page's status view opens on the last minutes, which this keeps.
        sampler = asyncio.create_task(every(proxy.history.interval_s, "the status history",
                                            proxy.history.sample))
        log.info("proxy on %s; device %s", self.cfg.proxy_url, self.device)
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits this way when it cannot bind
            self.error = f"the proxy could not listen on {host}:{port}"
        finally:
            log.info("stopping backends")
            starter.cancel()
            reporter.cancel()
            keeper.cancel()
            sampler.cancel()
            await asyncio.gather(starter, reporter, keeper, sampler, return_exceptions=True)
            await supervisor.stop()
            await proxy.aclose()
            try:
                usage.write(proxy.ledger.tally.take(), timeout=10)
            except Exception as e:  # the last batch is lost, but say so
                log.error("usage of the last second not written: %s", e)
        return EXIT_FAILED if self.error else EXIT_OK


async def every(seconds: float, what: str, job: Callable[[], Any], *,
                sleep: Callable[[float], Any] = asyncio.sleep) -> None:
    """Run `job` every `seconds` for good: a failure is logged (once until it changes or
    recovers, so a lasting one does not flood the log) and the next round tries again."""
    failing: str | None = None
    while True:
        await sleep(seconds)
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            if text != failing:
                log.error("%s failed (%s); trying again every %gs", what, text, seconds)
                failing = text
        else:
            if failing:
                log.info("%s works again", what)
                failing = None


def uvicorn_config(app, host: str, port: int, drain_seconds: float = 10.0,
                   proxy_cfg: cfgmod.ProxyConfig | None = None):
    """The proxy's server settings, shared by the daemon and the benchmark."""
    import importlib.util

    import uvicorn

    # httptools parses HTTP/1.1 several times faster than h11; both ship with uvicorn[standard].
    http: Any = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if http == "httptools":
        from .proxy.conns import Guard, connection_cap, guarded, raise_fd_limit

        p = proxy_cfg or cfgmod.ProxyConfig()
        cap = connection_cap(p.max_connections, raise_fd_limit())
        if cap < p.max_connections:
            log.warning("at most %d client connections (the file-descriptor limit allows "
                        "no more; max_connections = %d)", cap, p.max_connections)
        http = guarded(Guard(cap, p.header_timeout, p.max_header_bytes))
    # log_config=None: uvicorn's own lines (a malformed request…) go to the daemon's
    # rotated log, not to stderr, which is daemon.out when detached.
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          lifespan="off", http=http, proxy_headers=False, log_config=None,
                          timeout_graceful_shutdown=max(1, round(drain_seconds)))


def serve_proxy_forever(backends, proxy_cfg: cfgmod.ProxyConfig, keys_path: Path | None = None
                        ) -> None:
    """The proxy alone, with the daemon's settings and loop (for benchmarks)."""
    import uvicorn

    from .proxy import Proxy

    backends = list(backends)
    proxy = Proxy(backends, proxy_cfg, Supervisor(backends,
                                                  max_queue=proxy_cfg.max_queue_per_model),
                  keys_path=keys_path)
    server = uvicorn.Server(uvicorn_config(proxy, proxy_cfg.host, proxy_cfg.port,
                                           proxy_cfg.drain_seconds, proxy_cfg))
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(server.serve())


def _loop_factory():
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:
        return asyncio.new_event_loop


def _logging(foreground: bool) -> None:
    """Detached: logs/daemon.log, rotated at 10 MB (one line per request adds up).
    In the foreground: stderr, for the terminal or the journal."""
    from logging.handlers import RotatingFileHandler

    if foreground:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        cfgmod.logs_dir().mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(cfgmod.logs_dir() / "daemon.log", maxBytes=10 * 1024 * 1024,
                                      backupCount=3)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("LLMCTL_LOG_LEVEL", "INFO").upper())


def run(config_path: Path | None, *, foreground: bool = False) -> int:
    # Everything the daemon and its backends write (logs, usage.db, stack.json, caches) is
    # its user's alone; and state/ and logs/ are folders only its user can enter.
    os.umask(0o077)
    private_dir(cfgmod.state_dir(), files=True)
    private_dir(cfgmod.logs_dir(), files=True)
    _logging(foreground)
    # One line per health check would drown the request log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    lock = state.DaemonLock()
    if not lock.acquire():
        log.error("another llmctl daemon holds %s", state.path(state.LOCK))
        return EXIT_LOCKED
    clean = False
    try:
        cfg = cfgmod.load(config_path, device=gpu.detect_device)
        d = Daemon(cfg)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            rc = runner.run(d.serve())
        clean = rc == EXIT_OK
        return rc
    except LlmctlError as e:
        log.error("%s", e.message)
        state.write_stack(StackReport(pid=os.getpid(), error=e.message))
        return EXIT_FAILED
    finally:
        if clean:
            state.clear_stack()
        lock.release()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llmctl.daemon")
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--foreground", action="store_true", help="log to stderr")
    args = ap.parse_args(argv)
    sys.exit(run(args.config, foreground=args.foreground))


if __name__ == "__main__":
    main()
