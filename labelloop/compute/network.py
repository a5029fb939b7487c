"""Whether a host answers, in bounded time: the one check before anything waits on the network (a hub, a cluster)."""

from __future__ import annotations

import socket


def connect_problem(host: str, port: int, timeout: float, *, via: str = "") -> str | None:
    """None if a TCP connection to ``host``:``port`` opens within ``timeout`` seconds; else why not, in words.

    ``via``: said after the host's name (" (through the proxy ...)").
    """
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except socket.gaierror:
        return f"this machine cannot resolve {host}{via}: there is no network or no DNS"
    except TimeoutError:
        return f"{host} did not answer within {timeout:.0f} s{via}"
    except OSError as exc:
        return f"{host} cannot be reached{via} ({exc.strerror or type(exc).__name__})"
