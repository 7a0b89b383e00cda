"""Asking the publisher for a sample (the reader's end of the demand channel, docs/LAYOUT.md "Demand").

One datagram to the publisher's socket ``/dev/shm/<name>.want``, sent only when
the socket is what it should be: a socket owned by a user the reader trusts for
the segment itself (anyone else may have planted it, to read our requests or to
make us wait).  Sending never blocks and never fails loudly: without a channel
(an older publisher, ``--always-full``) every sample already runs every collector.
"""

from __future__ import annotations

import os
import socket
import stat

from shm_metrics import shm_layout as L


def ask(name: str, kind: bytes, trusted_uids: frozenset[int]) -> bool:
    """Send ``kind`` (``L.DEMAND_FULL`` or ``L.DEMAND_SCAN``); True if the publisher's socket took it."""
    path = L.demand_path(name)
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid not in trusted_uids:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(kind, path)
        except OSError:  # full (a flood is being ignored), gone, refused: the caller reads what is there
            return False
    return True
