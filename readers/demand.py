"""Asking the publisher for a sample (the reader's end of the demand channel, docs/LAYOUT.md "Demand").

One datagram to the publisher's socket ``/dev/shm/<name>.want``, sent only when
the socket is what it should be (looked at when a reader connects to it): a
socket owned by a user the reader trusts for the segment itself (anyone else may
have planted it, to read our requests or to make us wait).  Sending never blocks
and never fails loudly: without a channel (an older publisher, ``--always-full``)
every sample already runs every collector.
"""

from __future__ import annotations

import os
import socket
import stat

from shm_metrics import shm_layout as L


class DemandSocket:
    """The reader's end of one publisher's demand channel, connected on first use and kept: an ask then costs one
    ``send`` (with cold caches ~55 us of CPU, against ~185 for a stat, a new socket, a ``sendto`` by path and a
    close; ad hoc, 0.5 s apart).  The socket is checked when it is connected, as ``ask`` always checked it; a
    connected socket keeps talking to that very socket, whatever is put at the path afterwards.  When the
    publisher's socket closes (it stopped or restarted), the next ask connects anew, checking again."""

    def __init__(self, name: str) -> None:
        self.path = L.demand_path(name)
        self._sock: socket.socket | None = None

    def ask(self, kind: bytes, trusted_uids: frozenset[int]) -> bool:
        """Send ``kind`` (``L.DEMAND_FULL`` or ``L.DEMAND_SCAN``); True if the publisher's socket took it."""
        for _ in range(2):  # the kept connection, else a new one
            if self._sock is None and not self._connect(trusted_uids):
                return False
            try:
                self._sock.send(kind)
                return True
            except BlockingIOError:  # its queue is full (a flood is being ignored): the caller reads what is there
                return False
            except OSError:  # closed (ECONNREFUSED) or never there any more: look at the path again
                self.close()
        return False

    def _connect(self, trusted_uids: frozenset[int]) -> bool:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid not in trusted_uids:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.path)
        except OSError:  # gone, refused: no channel now
            sock.close()
            return False
        self._sock = sock
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
