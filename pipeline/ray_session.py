"""Start or join Ray: an embedded, quiet local Ray by default; an existing cluster with an address."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

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
                    if LOG_LEVEL_NOTICE not in line]
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
def ray_session(options: RayOptions, address: str | None = None) -> Iterator[None]:
    """Use the running Ray if this process already has one (tests), else connect or start one."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray Data's actor pools always keep constructor arguments in the object store, and the core
    # worker logs an error line about it for restartable actors (ray#53727); failures still raise.
    # Ray's native logger announces this setting on stderr when it starts ("logging.cc: Set ray log
    # level from environment variable ..."), so ray.init runs under _without_log_level_notice.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if ray.is_initialized():
        configure_data_context()
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
        # The workers' environment is inherited, not a runtime_env: the embedded raylet starts every
        # worker with the environment it was started with. A job runtime_env, even env_vars alone,
        # made Ray start each worker through a setup_worker process, discard the workers it had
        # prestarted without it and start a spare one: on the Debian corpus (ingest -> dedup,
        # 2 CPUs) 5 worker processes of which 3 never ran a task (about 1 s of CPU each), and the
        # first task waited for a worker to start.
        with _environ(WORKER_ENV), _without_log_level_notice():
            ray.init(
                address="local",
                num_cpus=options.num_cpus or os.cpu_count(),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                configure_logging=True,
                **kwargs,
            )
    configure_data_context()
    try:
        yield
    finally:
        ray.shutdown()
        stop_watchdog(watchdog)
