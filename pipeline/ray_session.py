"""Start or join Ray: an embedded, quiet local Ray by default; an existing cluster with an address."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence

from pipeline.ray_watchdog import start_watchdog, stop_watchdog
from pipeline.spec import RayOptions

#: environment that keeps Ray quiet and avoids thread oversubscription in workers
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "OMP_NUM_THREADS": "1",
}


def configure_data_context() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    with contextlib.suppress(Exception):
        ctx.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


LOG_LEVEL_NOTICE = "Set ray log level from environment variable"
#: what ray.init logs when it runs outside the main thread (:func:`ray_session_in_background` sets the
#: handler itself, in the main thread, before Ray starts)
SIGTERM_NOTICE = "SIGTERM handler is not set because current thread is not the main thread"


@contextlib.contextmanager
def _without_log_level_notice() -> Iterator[None]:
    """Run a block with the process's stderr (file descriptor 2, where Ray's C++ logger writes)
    captured, then pass every captured line on except Ray's notice about ``RAY_BACKEND_LOG_LEVEL``.

    No Ray setting silences that notice: it is printed whenever the variable is set, at any value.
    Nothing else is hidden, and the lines come out in order once ``ray.init`` returns or fails.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (embedded use): nothing to filter
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if LOG_LEVEL_NOTICE not in line and SIGTERM_NOTICE not in line]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the block only (the processes it starts keep
    them; the driver itself gets its own settings back)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _without_idle_head_processes() -> Iterator[None]:
    """``ray.init`` of the embedded Ray without the head processes and services it never uses (the
    block only).

    Ray 2.60 starts Python processes beside GCS and the raylet that an embedded run has no use for,
    each importing much of Ray (and aiohttp) on a 2-core host while the raylet and the first workers
    start, and it makes the start wait for some of them:

    - the API server (a dashboard process even with ``include_dashboard=False``, for the job and
      state HTTP APIs; ``pipeline submit`` talks to a cluster's): ``ray.init`` waits for it to publish
      its address before it starts the raylet, 1.8 s of its 5 s here. Not started.
    - the autoscaler monitor: a single-node embedded Ray has nothing to scale (``ray.init`` also asks
      GCS which autoscaler version runs before it starts one). Not started.
    - the log monitor, which tails worker log files to print them on the driver: the embedded Ray runs
      with ``log_to_driver=False`` (a task's error comes back with its result, not through logs).
      Not started.
    - the raylet's two Python agents. The dashboard agent (HTTP server for job submission, logs
      and metrics; metrics exporter), run in full, made the raylet wait before it registered the
      node: 3 s of a 6.6 s ``ray.init`` here under load, more when another Ray on the machine held
      its fixed HTTP port (52365). Run as a minimal install's (``--minimal``, what Ray runs when
      aiohttp is missing) it serves nothing, but still imports Ray's dashboard modules (1.3 s) only
      to write "-1, not in use" into the port files the raylet waits for. The runtime-env agent
      (0.6-1 CPU-second of imports while the raylet waits for its port file) serves only tasks that ask
      for a runtime environment, which tokenmill's embedded runs never pass. Both are replaced by
      stand-ins that start in milliseconds (:mod:`pipeline.ray_stand_in`, :func:`_agent_stand_ins`):
      the dashboard agent's port files are written before the raylet starts; the runtime-env
      stand-in binds and publishes the agent's port and becomes the real agent at the first
      connection (a plugin's task with a ``runtime_env`` still gets one, tested). ``ray.init``
      1.45-1.66 s instead of 2.47-2.85 s on a quiet host.

    ``ray.init`` took 3.6 s instead of 6.7-13.8 s on this host under load. Tasks, actors and Ray Data
    run without them (the tests and benchmarks run through this).

    One wait is shortened rather than removed: ``ray.init`` asks GCS for the new node with a call that,
    while the raylet has not registered yet, comes back about a second later, so the start went on up
    to a second after the node was there (measured: registered 1.2 s after the raylet started, found
    2.0 s after). The node table is polled every 20 ms first (:func:`_polled_get_node`): ``ray.init``
    2.3-2.5 s instead of 2.9-3.0 s on a quiet host.

    These are private functions of ``ray._private``: the ``ray==2.60.0`` pin keeps them as measured."""
    from ray._private import node, services, state, utils

    ask_gcs = services.get_node

    def _polled_get_node(gcs_address: str, node_id: str) -> dict:
        import time

        with contextlib.suppress(Exception):  # any trouble: the original call decides, as before
            table = state.GlobalState()
            table._initialize_global_state(services._get_gcs_client_options(gcs_address))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                    entry.get("NodeID") == node_id and entry.get("Alive") for entry in table.node_table()):
                time.sleep(0.02)
        return ask_gcs(gcs_address, node_id)

    def no_api_server(self: node.Node, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        self._webui_url = None

    def not_started(self: node.Node) -> None:
        return None

    def minimal_agent() -> ImportError:
        # Ray asks by importing the dashboard's optional dependencies (aiohttp, ...) in the driver, only
        # to choose the dashboard agent's command line, which the stand-in replaces anyway
        return ImportError("tokenmill's embedded Ray runs a stand-in for the raylet's dashboard agent")

    start_process = services.start_ray_process

    def start_raylet_with_stand_ins(command: list[str], process_type: str, *args: object, **kwargs: object) -> object:
        if process_type == "raylet":
            command = _agent_stand_ins(command)
        return start_process(command, process_type, *args, **kwargs)

    patches = [(node.Node, "start_api_server", no_api_server), (node.Node, "start_monitor", not_started),
               (node.Node, "start_log_monitor", not_started), (utils, "get_dashboard_dependency_error", minimal_agent),
               (services, "get_node", _polled_get_node), (services, "start_ray_process", start_raylet_with_stand_ins)]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, fn in patches:
        setattr(owner, name, fn)
    try:
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def _agent_stand_ins(command: list[str]) -> list[str]:
    """The raylet's command line with :mod:`pipeline.ray_stand_in` in its two agents' places, after
    writing the port files the minimal dashboard agent would write (-1: no metrics agent, no agent
    HTTP server), so the raylet reads them at once. The runtime-env stand-in writes its own port
    file and starts the real agent if a task ever asks for a runtime environment. Both name the
    session folder on their command lines, as every process of the session does, so the watchdog
    finds them (:mod:`pipeline.ray_watchdog`)."""
    from ray._raylet import (
        DASHBOARD_AGENT_LISTEN_PORT_NAME,
        METRICS_AGENT_PORT_NAME,
        METRICS_EXPORT_PORT_NAME,
        persist_port,
    )

    from pipeline import ray_stand_in

    args = ray_stand_in.options(command)
    session, node_id = args["session_dir"], args["node_id"]
    for name, given in ((METRICS_AGENT_PORT_NAME, args.get("metrics-agent-port")),
                        (METRICS_EXPORT_PORT_NAME, args.get("metrics_export_port")),
                        (DASHBOARD_AGENT_LISTEN_PORT_NAME, None)):
        if given in (None, "0"):  # a port Ray left to the agent to choose: the raylet reads its file
            persist_port(session, node_id, name, -1)
    stand_in = [sys.executable, "-S", ray_stand_in.__file__]
    dashboard = [*stand_in, "dashboard", f"--session-dir={session.rstrip('/')}/"]
    out = []
    for c in command:
        if c.startswith("--dashboard_agent_command="):
            c = f"--dashboard_agent_command={subprocess.list2cmdline(dashboard)}"
        elif c.startswith("--runtime_env_agent_command="):
            agent = shlex.split(c.split("=", 1)[1])
            c = f"--runtime_env_agent_command={subprocess.list2cmdline([*stand_in, 'runtime_env', *agent])}"
        out.append(c)
    return out


def _ray_defaults() -> None:
    """Ray settings of the driver's environment, where the user has not set them (a no-op once set)."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray Data's actor pools always keep constructor arguments in the object store, and the core
    # worker logs an error line about it for restartable actors (ray#53727); failures still raise.
    # Ray's native logger announces this setting on stderr when it starts ("logging.cc: Set ray log
    # level from environment variable ..."), so ray.init runs under _without_log_level_notice.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")


@contextlib.contextmanager
def ray_session(options: RayOptions, address: str | None = None, worker_env: bool = True,
                preload: Sequence[str] = ()) -> Iterator[None]:
    """Use the running Ray if this process already has one (tests), else connect or start one.
    ``worker_env=False``: the caller has put :data:`WORKER_ENV` in the environment already.
    ``preload``: modules the embedded Ray's workers import when they start, before they take a task
    (Ray's ``preload_python_modules``; see :func:`pipeline.stage_api.worker_preload`)."""
    import ray

    _ray_defaults()
    if ray.is_initialized():
        yield
        return
    target = address or options.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": dict(WORKER_ENV)}
    watchdog = None
    if target:
        with _without_log_level_notice():
            ray.init(address=target, runtime_env=runtime_env, logging_level=logging.ERROR, log_to_driver=True)
    else:
        kwargs = {}
        watchdog = start_watchdog()  # before ray.init: the embedded Ray dies with this driver
        if options.object_store_memory_mb:
            kwargs["object_store_memory"] = options.object_store_memory_mb << 20
        if preload:
            kwargs["_system_config"] = {"preload_python_modules": list(preload)}
        # The workers' environment is inherited, not a runtime_env: the embedded raylet starts every
        # worker with the environment it was started with. A job runtime_env, even env_vars alone,
        # made Ray start each worker through a setup_worker process, discard the workers it had
        # prestarted without it and start a spare one: on the Debian corpus (ingest -> dedup,
        # 2 CPUs) 5 worker processes of which 3 never ran a task (about 1 s of CPU each), and the
        # first task waited for a worker to start.
        with (_environ(WORKER_ENV) if worker_env else contextlib.nullcontext(), _without_log_level_notice(),
              _without_idle_head_processes()):
            ray.init(
                address="local",
                num_cpus=options.num_cpus or os.cpu_count(),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                configure_logging=True,
                **kwargs,
            )
    try:
        yield
    finally:
        ray.shutdown()
        stop_watchdog(watchdog)


class _Starting:
    """:func:`ray_session` held by a thread of its own, from its start to its shutdown: :meth:`wait`
    blocks until Ray is up (raising what starting it raised), :meth:`close` shuts it down.

    The thread lives as long as the session because Ray starts its head processes with
    ``PR_SET_PDEATHSIG``, which fires when the *thread* that started them exits: a thread that only
    ran ``ray.init`` and returned took GCS and raylet down with it."""

    def __init__(self, options: RayOptions, address: str | None, preload: Sequence[str] = ()) -> None:
        # the workers' environment (WORKER_ENV, inherited by the raylet) is set here, in the calling
        # thread, and put back by it (restore_env): never changed by one thread while another reads it
        self.env: contextlib.AbstractContextManager[None] | None = None
        _ray_defaults()
        if _starts_embedded(options, address):
            self.env = _environ(WORKER_ENV)
            self.env.__enter__()
        self.session = ray_session(options, address, worker_env=False, preload=preload)
        self.error: BaseException | None = None
        self.started, self.stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, name="tokenmill-ray", daemon=True)
        self.thread.start()

    def _hold(self) -> None:
        try:
            self.session.__enter__()
        except BaseException as exc:  # handed to the thread that waits
            self.error = exc
            return
        finally:
            self.started.set()
        self.stop.wait()
        try:
            self.session.__exit__(None, None, None)
        except BaseException as exc:  # handed to the thread that closes
            self.error = exc

    def wait(self) -> None:
        self.started.wait()
        self.restore_env()
        if self.error is not None:
            raise self.error

    def restore_env(self) -> None:
        """The driver's own environment back, once the raylet has started with the workers' one."""
        if self.env is not None and self.started.is_set():
            self.env.__exit__(None, None, None)
            self.env = None

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.restore_env()
        if self.error is not None:
            raise self.error


def _starts_embedded(options: RayOptions, address: str | None) -> bool:
    """Whether :func:`ray_session` will start an embedded Ray (not join a cluster or a running Ray).

    Ray is running in this process only if it was imported: importing it here only to ask would put
    ``import ray`` (0.7-0.8 s) on the driver's path before the start, instead of in the thread that
    starts Ray while the driver plans."""
    ray = sys.modules.get("ray")
    running = ray is not None and ray.is_initialized()
    return not (running or address or options.address or os.environ.get("RAY_ADDRESS"))


#: the Ray session being started in the background, if any (:func:`wait_for_ray` waits for it)
_STARTING: list[_Starting] = []


def wait_for_ray() -> None:
    """Block until the Ray session :func:`ray_session_in_background` is starting is up (no-op when
    none is): every use of Ray on the driver goes through :func:`pipeline.executor.run_shards`, which
    calls this first."""
    if _STARTING:
        _STARTING[-1].wait()


def ray_starting() -> bool:
    """Whether the Ray session :func:`ray_session_in_background` is starting is not up yet."""
    return bool(_STARTING) and not _STARTING[-1].started.is_set()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(signum)


@contextlib.contextmanager
def ray_session_in_background(options: RayOptions, address: str | None = None,
                              preload: Sequence[str] = ()) -> Iterator[None]:
    """:func:`ray_session`, started in a background thread: the block runs at once and waits for Ray
    only where it first uses it (:func:`wait_for_ray`).

    Why: starting the embedded Ray (GCS, raylet, the raylet's agents, the prestarted workers) takes
    about 3 s of wall time here, mostly waiting on those processes;
    the driver's own work before its first Ray task (the plan under the lock, claiming the output, a
    stage's driver-side set-up such as ingest planning one file) runs meanwhile, with the workers'
    environment (:data:`WORKER_ENV`) until Ray is up and the driver waits for it. ``ray.init`` only sets
    its SIGTERM handler (exit, so the lock is released and Ray shut down) from the main thread: it is
    set here, in the main thread, instead. On leaving, the start is waited for and Ray shut down."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    starting = _Starting(options, address, preload)
    _STARTING.append(starting)
    try:
        yield
    finally:
        _STARTING.remove(starting)
        starting.close()
