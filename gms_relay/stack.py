"""`gms-relay up`: the whole relay on one machine, as child processes of one supervisor.

Redis (embedded unless REDIS_URL is set), the ingress, N workers, rq-dashboard and, with
`--simulate`, the GMS simulator and a demo webhook receiver. Each child's output goes to its own file
under `<data-dir>/logs/`, so the terminal keeps what an operator needs: a banner with the URLs and a
status line every few seconds. Ctrl-C or SIGTERM stops the children in waves, traffic first and Redis
last (see `up_waves`); a second Ctrl-C stops them at once. A child that dies takes the stack down
with a non-zero exit, and children die with the supervisor (PR_SET_PDEATHSIG), so nothing is left
behind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import httpx
import msgspec

from gms_relay.banner import BannerInfo, banner, banner_redis
from gms_relay.demo import demo_env, simulator_summary
from gms_relay.exposure import connect_host, ensure_push_token, exposure_warning
from gms_relay.ports import busy_ports
from gms_relay.status import StatusReader
from shared.redis_server import RedisServer, RedisServerError
from shared.settings import Settings, load_settings

# Stack.stop() without waves (tests, benchmarks): one child at a time, each given this long.
STOP_TIMEOUT_S = 15.0
# `up`'s stop budget per wave; a child still running after its wave's deadline is killed, which
# loses nothing: a push answered 200 is in Redis already, a killed drain's chats fall due again when
# their lease (LEASE_TTL_MS) ends, an unfinished webhook delivery is re-leased and sent again.
SIMULATOR_SETTLE_S = 1.0  # the simulator's --stop-settle: it waits this long for acknowledgements
STOP_MARGIN_S = 1.0  # process exit, the simulator's report, a worker closing its webhook clients
# Nothing sends to the ingress any more, nor delivers to the demo receiver (the workers are gone);
# uvicorn finishes what is in flight (an ingress request is one Redis call) and exits.
SERVERS_STOP_S = 2.0
READY_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 8


class Wave(NamedTuple):
    """Children (by name prefix) that are signalled together and share one deadline."""

    names: tuple[str, ...]
    timeout_s: float


class StartupFailed(Exception):
    """The stack could not start as asked; the message says why and where to look."""


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the stack was starting."""


def _die_with_parent() -> None:
    """Linux: deliver SIGTERM to the child when the supervisor dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def fresh_log(path: Path) -> Path:
    """`path`, emptied for this run; the previous run's log is kept beside it as `<name>.1` (the one
    an operator wants after a crash and a restart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))
    return path


class Child:
    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        # PR_SET_PDEATHSIG fires when the spawning *thread* exits, so only the main thread asks for it.
        on_main_thread = threading.current_thread() is threading.main_thread()
        with contextlib.ExitStack() as files:
            log = files.enter_context(log_path.open("wb")) if log_path is not None else None
            self.process = subprocess.Popen(
                argv,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent if on_main_thread else None,
            )  # the child holds its own copy of the log file; ours is closed on leaving

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Signal the child's whole process group (RQ's scheduler runs in a grandchild)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def wait(self, timeout_s: float, hurry: threading.Event | None = None) -> None:
        """Wait for the child to exit, killing it after `timeout_s` (or as soon as `hurry` is set)."""
        deadline = time.monotonic() + timeout_s
        while self.alive() and time.monotonic() < deadline and not (hurry is not None and hurry.is_set()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(min(0.05, max(deadline - time.monotonic(), 0.0)))
        if self.alive():
            self.signal(signal.SIGKILL)
            self.process.wait()
        self.signal(signal.SIGKILL)  # leftovers of the group, if any

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of the child's log, indented, to show with a message about it ("" without a log)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"\n  last lines of {self.log_path}:\n" + "\n".join(f"    {line}" for line in tail)


class Stack:
    """Children started in order and stopped in reverse order (or in waves), Redis last. With a
    `log_dir`, each child's stdout and stderr go to `<log_dir>/<name>.log`."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.children: list[Child] = []
        self.redis: RedisServer | None = None
        self.log_dir = log_dir

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> Child:
        log_path = fresh_log(self.log_dir / f"{name}.log") if self.log_dir is not None else None
        child = Child(name, argv, env, log_path)
        self.children.append(child)
        return child

    def stop(self, waves: Sequence[Wave] = (), hurry: threading.Event | None = None) -> None:
        """Stop each wave in turn, then the children no wave names (last started first), then Redis."""
        for wave in waves:
            self._stop_together(
                [c for c in self.children if c.name.startswith(wave.names)], wave.timeout_s, hurry
            )
        for child in reversed(list(self.children)):
            self._stop_together([child], STOP_TIMEOUT_S, hurry)
        if self.redis is not None:
            self.redis.stop()  # it writes the last second of its append-only file and exits in ms
            self.redis = None

    def _stop_together(self, children: list[Child], timeout_s: float, hurry: threading.Event | None) -> None:
        for child in children:
            child.terminate()
        deadline = time.monotonic() + timeout_s
        for child in children:
            child.wait(max(deadline - time.monotonic(), 0.0), hurry)
            self.children.remove(child)

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if not c.alive()), None)


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gms_relay", *args]


def wait_until_ready(url: str, timeout_s: float = 20.0, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready")


def _dashboard_available() -> bool:
    try:
        import rq_dashboard  # noqa: F401
    except ImportError:
        return False
    return True


def up_waves(settings: Settings) -> tuple[Wave, ...]:
    """Traffic first: the simulator stops sending (its last pushes are still answered, the ingress is
    up), the workers finish their current drain job (RQ's warm shutdown; a drain hands its worker
    back within DRAIN_BUDGET_MS), their Refresh calls answered by the simulated Chat API during the
    simulator's settle wait, and rq-dashboard only reads. Then the ingress, and the webhook receiver
    the workers delivered to."""
    traffic_s = max(SIMULATOR_SETTLE_S, settings.drain_budget_ms / 1000) + STOP_MARGIN_S
    return (
        Wave(("simulator", "rq-dashboard", "worker-"), traffic_s),
        Wave(("ingress", "receiver"), SERVERS_STOP_S),
    )


class _StopRequest:
    """SIGINT / SIGTERM: the first asks the stack to stop in order, a second to stop it at once."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.hurry = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        (self.hurry if self.requested.is_set() else self.requested).set()


def _say(message: str, error: bool = False) -> None:
    print(message, file=sys.stderr if error else sys.stdout, flush=True)


def _wait_ready(url: str, child: Child, stop: _StopRequest) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not stop.requested.is_set():
        if not child.alive():
            code = child.process.returncode
            raise StartupFailed(f"{child.name} exited with code {code} while starting{child.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise StartupFailed(
                f"{child.name} did not answer {url} in {READY_TIMEOUT_S:g} s{child.log_tail()}"
            )
        stop.requested.wait(0.05)
    raise _Interrupted


def _supervise(stack: Stack, stop: _StopRequest, status: StatusReader | None, interval_s: float) -> int:
    """Until a stop is asked for: watch the children, and print a status line every `interval_s`."""
    next_status = time.monotonic() + interval_s

    def until_next_look() -> float:  # children are looked at every 0.2 s, status lines are on time
        return 0.2 if status is None else min(0.2, max(next_status - time.monotonic(), 0.0))

    while not stop.requested.wait(until_next_look()):
        dead = stack.first_dead()
        if dead is not None:
            code = dead.process.returncode
            _say(f"gms-relay: {dead.name} exited with code {code}; stopping...{dead.log_tail()}", error=True)
            return 1
        if status is not None and time.monotonic() >= next_status:
            _say(status.line())
            next_status += interval_s
    return 0


def run_stack(args: argparse.Namespace) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # each line out at once, also through a pipe
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # the children's prints reach their log files as they happen
    data_dir, log_dir = Path(args.data_dir), Path(args.data_dir) / "logs"
    chat_port, receiver_port, generated = demo_env(env) if args.simulate else (0, 0, {})
    push_token = ensure_push_token(env)  # made up unless set (or ALLOW_OPEN_PUSH=true): the banner shows it
    if not env.get("GMS_URL"):
        _say("gms-relay: GMS_URL is required (or use --simulate)", error=True)
        return 2
    settings = load_settings(env)  # a bad variable is one message now, not N dying children
    dashboard = not args.no_dashboard and _dashboard_available()
    problems = busy_ports(args.host, args.port, args.dashboard_port if dashboard else None)
    for problem in problems:
        _say(f"gms-relay: {problem}", error=True)
    if problems:
        return 2
    warning = exposure_warning(args.host, settings.push_token is not None)
    if warning:
        _say(f"gms-relay: {warning}", error=True)
    stop = _StopRequest()
    stack = Stack(log_dir=log_dir)
    status: StatusReader | None = None
    simulator: Child | None = None
    _say(f"gms-relay: starting (logs in {log_dir}/)")
    try:
        # With REDIS_SENTINELS the Sentinels name the Redis: none is embedded, and every child (it gets
        # this environment) asks them for the primary.
        if not env.get("REDIS_URL") and not settings.redis_sentinels:
            redis_server = RedisServer(
                data_dir.resolve() / "redis", log_file=fresh_log(log_dir / "redis.log")
            )
            redis_server.start()
            stack.redis = redis_server
            env["REDIS_URL"] = redis_server.url
            settings = msgspec.structs.replace(settings, redis_url=redis_server.url)
        if args.simulate:
            receiver = stack.start(
                "receiver",
                [sys.executable, "-m", "simulator.receiver", "--port", str(receiver_port)],
                env,
            )
            _wait_ready(f"http://127.0.0.1:{receiver_port}/livez", receiver, stop)
        for number in range(args.workers):
            stack.start(f"worker-{number + 1}", relay_command("worker"), env)
        ingress = stack.start(
            "ingress", relay_command("ingress", "--host", args.host, "--port", str(args.port)), env
        )
        base = f"http://{connect_host(args.host)}:{args.port}"
        _wait_ready(f"{base}/readyz", ingress, stop)
        if dashboard:
            stack.start(
                "rq-dashboard",
                [
                    sys.executable,
                    "-m",
                    "gms_relay.dashboard",  # rq-dashboard reading the relay's JSON jobs, workers' too
                    "--redis-url",  # with REDIS_SENTINELS the launcher asks the Sentinels instead
                    settings.redis_url,
                    "--port",
                    str(args.dashboard_port),
                    "--bind",
                    "127.0.0.1",
                    # Deleting a dead letter there would strand its chat's later deliveries; skip-failed
                    # releases them.
                    "--disable-delete",
                ],
                env,
            )
            print(f"gms-relay: rq-dashboard at http://127.0.0.1:{args.dashboard_port}")
        if args.simulate:
            simulator = stack.start(
                "simulator",
                [
                    sys.executable,
                    "-m",
                    "simulator",
                    "--push-url",
                    f"{base}/push",
                    "--api-url",
                    base,
                    "--chat-port",
                    str(chat_port),
                    "--mode",
                    "mixed",
                    "--forever",
                    "--stop-settle",
                    str(SIMULATOR_SETTLE_S),
                ],
                env,
            )
        names = [c.name for c in stack.children]
        redis_url, redis_described = banner_redis(settings)
        info = BannerInfo(
            ingress_url=base,
            redis_url=redis_url,
            redis_described=redis_described,
            embedded_data_dir=data_dir / "redis" if stack.redis else None,
            log_dir=log_dir,
            log_names=[f"{name}.log" for name in names] + (["redis.log"] if stack.redis else []),
            workers=args.workers,
            dashboard_url=f"http://127.0.0.1:{args.dashboard_port}" if "rq-dashboard" in names else None,
            status_interval_s=args.status_interval,
            simulator=f"demo chats from a simulated GMS at {env['GMS_URL']}, webhooks to {env['WEBHOOK_URL']}"
            if args.simulate
            else None,
            generated=generated,
            push_token=push_token,
            push_token_set=settings.push_token is not None,
        )
        _say(banner(info))
        if args.status_interval > 0:
            status = StatusReader(settings, f"{base}/metrics")
        return _supervise(stack, stop, status, args.status_interval)
    except StartupFailed as exc:
        _say(f"gms-relay: {exc}", error=True)
        return 1
    except RedisServerError as exc:
        _say(f"gms-relay: {exc}", error=True)
        return 2
    except _Interrupted:
        return 0
    finally:
        if stop.requested.is_set():
            _say("gms-relay: stopping... (Ctrl-C again to stop at once)")
        started, ran = time.monotonic(), bool(stack.children or stack.redis)
        stack.stop(up_waves(settings), hurry=stop.hurry)
        if status is not None:
            status.close()
        summary = simulator_summary(simulator.log_path) if simulator and simulator.log_path else None
        if summary:
            _say(f"gms-relay: simulator summary:\n{summary}")
        if ran:
            _say(f"gms-relay: stopped in {time.monotonic() - started:.1f} s")
