"""Stand-ins for the embedded raylet's two Python agents (:func:`pipeline.ray_session._agent_stand_ins`).

Run by the raylet in the agents' place, with ``python -S`` and the standard library only, so they
start in milliseconds instead of the agents' ~1 s of imports each on every run, which the raylet
waited for before it registered the node.

- ``dashboard``: the minimal dashboard agent serves nothing (no metrics agent, no HTTP server); its
  port files are written before the raylet starts. The stand-in only lives as long as the raylet,
  which monitors it as it would the agent.
- ``runtime_env ARGV...``: binds the agent's port at once and writes its port file, as the agent
  does; tokenmill's embedded runs pass no runtime environment (the workers inherit the driver's),
  so usually nothing ever connects. At the first connection it becomes the real agent (``exec`` of
  ``ARGV``, the raylet's own agent command, on the same port): the raylet's client retries until
  the agent answers, so a task that asks for a runtime environment still gets one.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time

PORT_FILE = "runtime_env_agent_port"


def options(argv: list[str]) -> dict[str, str]:
    """``--name=value`` arguments of a command line, by name (without the dashes)."""
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def persist_port(session_dir: str, node_id: str, name: str, port: int) -> None:
    """Ray's port file (``ray._raylet.persist_port``'s format: the decimal port), written atomically."""
    path = os.path.join(session_dir, f"{name}_{node_id}")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, path)


def dashboard() -> None:
    raylet = os.getppid()
    while os.getppid() == raylet:
        time.sleep(1)


def runtime_env(argv: list[str]) -> None:
    opts = options(argv)
    family, kind, proto, _, address = socket.getaddrinfo(opts["node-ip-address"], 0, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the agent binds it
    sock.bind(address)
    sock.listen(16)
    port = sock.getsockname()[1]
    persist_port(opts["session-dir"], opts["node-id"], PORT_FILE, port)
    raylet = os.getppid()
    while os.getppid() == raylet:
        if select.select([sock], [], [], 1.0)[0]:
            sock.close()  # the raylet's client retries while the agent starts and binds the port again
            agent = [f"--runtime-env-agent-port={port}" if a.startswith("--runtime-env-agent-port=") else a
                     for a in argv]
            os.execv(agent[0], agent)


if __name__ == "__main__":
    if sys.argv[1] == "dashboard":
        dashboard()
    else:
        runtime_env(sys.argv[2:])
