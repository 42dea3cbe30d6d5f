"""A TCP relay in front of a server, which a test can take down and bring back on the same port.

Stopping it looks to a client exactly like a server that went away: open connections are reset and
new ones are refused until it starts again. The server behind it keeps its state (moto keeps its
buckets in memory, so stopping moto itself would lose them).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from gallery_common.netutil import free_port


class TcpProxy:
    """Relays 127.0.0.1:`port` to `upstream`; counts the bytes clients sent through it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.sent = 0  # client → server bytes since the proxy was made
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Refuse new connections and reset the open ones (SO_LINGER 0: an RST, as from a dead host)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(256 * 1024):
                dest.sendall(data)
                if upstream:
                    with self._lock:
                        self.sent += len(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.difference_update((source, dest))
            for sock in (source, dest):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
