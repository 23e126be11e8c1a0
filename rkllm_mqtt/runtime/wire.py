"""The daemon ↔ runtime child channel: pickled messages, each behind its 4-byte length.

The same frame as `multiprocessing.connection.Connection` over a socket, written out here because
importing multiprocessing (tempfile, its contexts and reducers) costs the child ~1.7 MB RSS, and
the child's whole budget is small (daemon plus child ≤ 60 MB). Both ends are our own code, so
unpickling what the other end sent is safe.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

_LENGTH = struct.Struct("!I")


class Channel:
    """One end of a connected stream socket; send/recv whole messages, EOFError when it closes."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._sock.sendall(_LENGTH.pack(len(data)) + data)

    def recv(self) -> Any:
        (size,) = _LENGTH.unpack(self._read(_LENGTH.size))
        return pickle.loads(self._read(size))

    def _read(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size:
            chunk = self._sock.recv(min(size, 1 << 20))
            if not chunk:
                raise EOFError("the other end closed the channel")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._sock.close()
