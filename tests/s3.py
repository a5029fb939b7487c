"""A real S3-speaking server for tests: moto's server mode on 127.0.0.1 and a free port.

Every client the app uses (pyarrow, deltalake, polars, boto3 in the tests)
reaches it through the usual AWS variables, exactly as they would reach AWS
or MinIO. :class:`CuttingProxy` stands between them and the server to break
the network at a chosen request, as a dropped connection would.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's S3 server; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def aws_env(endpoint: str) -> dict[str, str]:
    """The variables a user sets to reach an S3-compatible server (test credentials: moto accepts any)."""
    return {
        "AWS_ACCESS_KEY_ID": "labelloop-test-key",
        "AWS_SECRET_ACCESS_KEY": "labelloop-test-secret-do-not-log",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }


class CuttingProxy:
    """A TCP proxy to ``endpoint`` that, once armed, drops every connection whose request head
    satisfies ``cut`` (and refuses new ones until disarmed): a network that fails mid-operation."""

    def __init__(self, endpoint: str, cut: Callable[[bytes], bool]):
        host, port = endpoint.rsplit("//", 1)[1].split(":")
        self.target = (host, int(port))
        self.cut = cut
        self.armed = False
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.target) as upstream:
            pump = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
            pump.start()
            while True:
                data = client.recv(65536)
                if not data:
                    break
                if self.armed and self.cut(data[:2048]):
                    self.cuts += 1
                    client.shutdown(socket.SHUT_RDWR)
                    return
                upstream.sendall(data)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
