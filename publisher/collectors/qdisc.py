"""Queueing disciplines: node_exporter's ``qdisc`` collector (off by default).

The root qdisc of each interface (the one whose parent is the root handle),
its counters as the kernel's ``tc`` statistics give them.  On a host they
come from an rtnetlink dump (RTM_GETQDISC), read with the standard library's
AF_NETLINK socket: the request is one fixed header and the answer a few
fixed structures (``struct tcmsg``, the TCA_STATS2 basic and queue blocks),
fewer lines than wrapping a netlink library.

Options, as node_exporter's flags:

* ``qdisc.fixtures``: a directory with a ``results.json`` (node_exporter's
  test fixture, a list of qdisc records) read instead of the kernel;
* ``qdisk.device-include`` / ``qdisk.device-exclude``: regular expressions
  (searched, not anchored) selecting interfaces; giving both is refused.
  node_exporter 1.5.0 builds its filter from the exclude flag twice, so it
  ignores an include; here the include selects as its name says (on the
  end-to-end fixture both keep every qdisc).
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register

_LABELS = ("device", "kind")
BYTES = counter("node_qdisc_bytes_total", "Number of bytes sent.", *_LABELS)
PACKETS = counter("node_qdisc_packets_total", "Number of packets sent.", *_LABELS)
DROPS = counter("node_qdisc_drops_total", "Number of packets dropped.", *_LABELS)
REQUEUES = counter("node_qdisc_requeues_total", "Number of packets dequeued, not transmitted, and requeued.",
                   *_LABELS)
OVERLIMITS = counter("node_qdisc_overlimits_total", "Number of overlimit packets.", *_LABELS)
QLEN = gauge("node_qdisc_current_queue_length", "Number of packets currently in queue to be sent.", *_LABELS)
BACKLOG = gauge("node_qdisc_backlog", "Number of bytes currently in queue to be sent.", *_LABELS)
# Family -> the record's field (the names of node_exporter's fixture records).
_FIELDS = ((BYTES, "Bytes"), (PACKETS, "Packets"), (DROPS, "Drops"), (REQUEUES, "Requeues"),
           (OVERLIMITS, "Overlimits"), (QLEN, "Qlen"), (BACKLOG, "Backlog"))

# rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/pkt_sched.h, linux/gen_stats.h).
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_RTM_NEWQDISC, _RTM_GETQDISC = 36, 38
_TCA_KIND, _TCA_STATS, _TCA_STATS2 = 1, 3, 7
_TCA_STATS_BASIC, _TCA_STATS_QUEUE = 1, 3
_TC_H_ROOT = 0xFFFFFFFF
_NLA_TYPE_MASK = 0x3FFF  # strips the nested / byte-order flag bits
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info


def _attributes(buf: bytes, offset: int = 0):
    """(type, payload) of each netlink attribute in ``buf`` from ``offset``."""
    while offset + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, offset)
        if length < 4:
            return
        yield kind & _NLA_TYPE_MASK, buf[offset + 4:offset + length]
        offset += (length + 3) & ~3


def parse_qdisc_message(payload: bytes) -> dict:
    """One RTM_NEWQDISC payload (tcmsg and attributes) as a record like node_exporter's fixture's."""
    _, ifindex, handle, parent, _ = _TCMSG.unpack_from(payload)
    record = {"Ifindex": ifindex, "Handle": handle, "Parent": 0 if parent == _TC_H_ROOT else parent}
    for kind, data in _attributes(payload, _TCMSG.size):
        if kind == _TCA_KIND:
            record["Kind"] = data.split(b"\0", 1)[0].decode()
        elif kind == _TCA_STATS2:
            for sub, block in _attributes(data):
                if sub == _TCA_STATS_BASIC and len(block) >= 12:
                    record["Bytes"], record["Packets"] = struct.unpack_from("=QI", block)
                elif sub == _TCA_STATS_QUEUE and len(block) >= 20:
                    (record["Qlen"], record["Backlog"], record["Drops"], record["Requeues"],
                     record["Overlimits"]) = struct.unpack_from("=5I", block)
        elif kind == _TCA_STATS and len(data) >= 36:
            # The older struct tc_stats, sent too: the same counters but requeues.
            (record["Bytes"], record["Packets"], record["Drops"], record["Overlimits"], _, _, record["Qlen"],
             record["Backlog"]) = struct.unpack_from("=QIIIIIII", data)
    return record


class _QdiscDump:
    """An rtnetlink socket kept open; ``records()`` dumps every qdisc of this network namespace."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def records(self) -> list[dict]:
        self.seq += 1
        tcmsg = bytes(_TCMSG.size)  # every qdisc of every interface
        self.sock.send(_HEADER.pack(_HEADER.size + len(tcmsg), _RTM_GETQDISC, _NLM_F_REQUEST | _NLM_F_DUMP,
                                    self.seq, 0) + tcmsg)
        out = []
        while True:
            data = self.sock.recv(1 << 17)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise ValueError("malformed netlink message")
                body = data[offset + _HEADER.size:offset + length]
                offset += (length + 3) & ~3
                if seq != self.seq:
                    continue  # an answer to an earlier request that failed half-way
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    error = struct.unpack_from("=i", body)[0]
                    if error:
                        raise OSError(-error, os.strerror(-error))
                elif kind == _RTM_NEWQDISC:
                    record = parse_qdisc_message(body)
                    try:
                        record["IfaceName"] = socket.if_indextoname(record["Ifindex"])
                    except OSError:
                        continue  # the interface went away since the dump
                    out.append(record)

    def close(self) -> None:
        self.sock.close()


@register
class Qdisc(Collector):
    name = "qdisc"
    reports = ("qdisc",)
    default_enabled = False
    families = tuple(family for family, _ in _FIELDS)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        include = ctx.option("qdisk.device-include") or None
        exclude = ctx.option("qdisk.device-exclude") or None
        if include and exclude:
            raise ValueError("qdisk.device-include and qdisk.device-exclude are mutually exclusive")
        self._include = re.compile(str(include)) if include else None
        self._exclude = re.compile(str(exclude)) if exclude else None
        fixtures = ctx.option("qdisc.fixtures") or ""
        self._fixture = os.path.join(str(fixtures), "results.json") if fixtures else None
        self._dump = None if self._fixture else _QdiscDump()
        self.records()  # fails here, not every sample, where the kernel refuses the dump

    def records(self) -> list[dict]:
        if self._fixture is not None:
            with open(self._fixture, "rb") as f:
                return json.load(f) or []
        return self._dump.records()

    def _ignored(self, device: str) -> bool:
        if self._exclude is not None and self._exclude.search(device):
            return True
        return self._include is not None and not self._include.search(device)

    def collect(self, out: Sample) -> None:
        for record in self.records():
            device = record.get("IfaceName", "")
            if record.get("Parent", 0) != 0 or self._ignored(device):
                continue
            labels = (device, record.get("Kind", ""))
            for family, field in _FIELDS:
                out.add(family, labels, record.get(field, 0))

    def close(self) -> None:
        super().close()
        if self._dump is not None:
            self._dump.close()
