"""``pipeline submit``: run a spec on a Ray cluster as a Ray Job (Ray Job Submission SDK).

Why a job rather than ``pipeline run --address``: the driver then lives on the cluster's head node,
so a laptop can disconnect, and the job's logs and status stay queryable in the dashboard.

The runtime environment carries the spec's folder as ``working_dir`` (so relative input paths in the
spec still resolve on the head) and, for clusters whose image lacks tokenmill, a ``pip`` list
(``--pip tokenmill`` or ``--pip /path/to/tokenmill.whl``). The entrypoint names an explicit
interpreter (``--python``, default this one) because a bare ``python`` on the head may not be the
environment that has Ray (seen with Ray 2.60 job submission). Exit status: 0 when the job SUCCEEDED, 1 otherwise; the
stage's error is in the streamed logs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.commands import register_command
from pipeline.errors import TokenmillError

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec")
    p.add_argument("--address", help="Ray dashboard/Jobs API address, e.g. http://HEAD:8265 "
                   "(default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS)")
    p.add_argument("--output", help="output directory or URI as the head node sees it (overrides the spec)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE")
    p.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="install on the cluster (repeatable): 'tokenmill', a wheel path or URL")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter on the head node that has tokenmill (default: this one)")
    p.add_argument("--no-working-dir", action="store_true",
                   help="do not upload the spec's folder; the spec path must exist on the head node")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="environment for the job")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")


def build_job(args: argparse.Namespace) -> dict[str, Any]:
    """The submit_job keyword arguments for ``args`` (pure: testable without a cluster)."""
    spec = Path(args.spec)
    if not spec.is_file():
        raise TokenmillError(f"spec not found: {spec}")
    # the driver's ray.init adds its own worker env_vars; without the override Ray refuses to merge
    # them with the job's runtime env ("Failed to merge the Job's runtime env")
    runtime_env: dict[str, Any] = {"env_vars": {"PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}}
    if args.no_working_dir:
        spec_arg = str(spec.resolve())
    else:
        runtime_env["working_dir"] = str(spec.resolve().parent)
        spec_arg = spec.name
    if args.pip:
        runtime_env["pip"] = list(args.pip)
    for kv in args.env:
        key, sep, value = kv.partition("=")
        if not sep:
            raise TokenmillError(f"--env expects KEY=VALUE, got {kv!r}")
        runtime_env["env_vars"][key] = value
    cmd = [args.python, "-m", "pipeline", "run", spec_arg, "--quiet"]
    if args.output:
        out = args.output
        if "://" not in out and args.no_working_dir:
            out = str(Path(out).resolve())
        cmd += ["--output", out]
    for stage in args.force:
        cmd += ["--force", stage]
    return {
        "entrypoint": shlex.join(cmd),
        "runtime_env": runtime_env,
        "submission_id": f"tokenmill-{spec.stem}-{uuid.uuid4().hex[:8]}",
    }


def _address(args: argparse.Namespace) -> str:
    addr = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not addr:
        raise TokenmillError("no cluster address: pass --address http://HEAD:8265 (or set RAY_ADDRESS)")
    return addr


async def _tail(client: Any, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


@register_command("submit", "submit a spec to a Ray cluster as a Ray Job and stream its logs", _add_arguments)
def submit_command(args: argparse.Namespace, console: Console) -> int:
    from ray.job_submission import JobSubmissionClient

    job = build_job(args)
    try:
        client = JobSubmissionClient(_address(args))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise TokenmillError(f"cannot reach the Ray Jobs API: {exc}") from None
    deadline = time.time() + 180  # under load the head's job agent can take minutes to come up
    while True:  # a freshly started head answers "No available agent" until its job agent is up
        try:
            job_id = client.submit_job(**job)
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise TokenmillError(f"job submission failed: {exc}") from None
            time.sleep(2)
    console.print(f"submitted job {job_id}", highlight=False)
    if args.no_wait:
        return 0
    try:
        asyncio.run(_tail(client, job_id))
    except Exception as exc:  # log streaming is best effort; the status below decides
        console.print(f"(log stream ended: {exc})", highlight=False)
    status = str(client.get_job_status(job_id))
    while status.split(".")[-1] not in TERMINAL:
        time.sleep(1)
        status = str(client.get_job_status(job_id))
    status = status.split(".")[-1]
    info = client.get_job_info(job_id)
    if status != "SUCCEEDED":
        Console(stderr=True).print(f"[red]job {job_id} {status}[/]: {info.message or ''}", highlight=False)
        return 1
    console.print(f"job {job_id} SUCCEEDED", highlight=False)
    return 0
