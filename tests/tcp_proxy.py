"""A TCP proxy in front of a real server (Redis, S3) that a test can freeze or cut, to see how
the services behave when a dependency hangs or goes away."""

import select
import socket
import threading
from contextlib import suppress
from types import TracebackType

from scripts.localstack import free_port


class TcpProxy:
    """Forwards 127.0.0.1:port to upstream. `freeze()` stops moving bytes (a hung server still
    accepts connections); `cut()` closes every connection and refuses new ones (a dead one)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._frozen = threading.Event()
        self._stopped = threading.Event()
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def __enter__(self) -> "TcpProxy":
        self.restore()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stopped.set()
        self.cut()

    def freeze(self) -> None:
        """Keep connections open but move no bytes, as a stopped (SIGSTOP) server would."""
        self._frozen.set()

    def thaw(self) -> None:
        """Move bytes again."""
        self._frozen.clear()

    def cut(self) -> None:
        """Close every connection and stop listening: connections are refused."""
        with self._lock:
            if self._listener is not None:
                # shutdown() wakes the thread blocked in accept(); close() alone would not.
                with suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for sock in self._connections:
                with suppress(OSError):
                    sock.close()
            self._connections.clear()

    def restore(self) -> None:
        """Listen again on the same port, forwarding normally."""
        self._frozen.clear()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while not self._stopped.is_set():
                if self._frozen.is_set():
                    self._stopped.wait(0.05)
                    continue
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in peers:
                with suppress(OSError):
                    sock.close()
