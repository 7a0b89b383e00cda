"""/sys/class/infiniband: node_exporter's ``infiniband`` collector (HCAs' ports: state, rate, traffic and errors).

The devices, their ports and counter files are found when the collector
starts and again every ``rescan_seconds``; a device's identity (board id, firmware, HCA type) is read then, the
port state, rate and every counter file stay open and are re-read every
sample.  Data counters count 4-byte words: they are multiplied by 4 to bytes,
as there.  A counter the HCA cannot report (``N/A (no PMA)``) is left out.
Without the infiniband class the collector is unavailable, as there.
"""

from __future__ import annotations

import errno
import os
import struct
from functools import partial

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, counter, gauge, register
from shm_metrics.publisher.collectors.learned import LearnedGroup
from shm_metrics.publisher.collectors.numbers import Block
from shm_metrics.publisher.collectors.sysfs_util import go_int, sys_read

INFO = gauge("node_infiniband_info", "Non-numeric data from /sys/class/infiniband/<device>, value is always 1.",
             "device", "board_id", "firmware_version", "hca_type")
STATE = gauge("node_infiniband_state_id", "State of the InfiniBand port (0: no change, 1: down, 2: init, 3: armed, "
              "4: active, 5: act defer)", "device", "port")
PHYSICAL_STATE = gauge("node_infiniband_physical_state_id", "Physical state of the InfiniBand port (0: no change, "
                       "1: sleep, 2: polling, 3: disable, 4: shift, 5: link up, 6: link error recover, 7: phytest)",
                       "device", "port")
RATE = gauge("node_infiniband_rate_bytes_per_second", "Maximum signal transfer rate", "device", "port")


def _counter(name: str, help_: str) -> FamilyInfo:
    return counter(f"node_infiniband_{name}", help_, "device", "port")


# (directory, file) -> (family, factor)
COUNTERS: dict[tuple[str, str], tuple[FamilyInfo, int]] = {
    ("counters_ext", "port_multicast_rcv_packets"): (_counter(
        "legacy_multicast_packets_received_total", "Number of multicast packets received"), 1),
    ("counters_ext", "port_multicast_xmit_packets"): (_counter(
        "legacy_multicast_packets_transmitted_total", "Number of multicast packets transmitted"), 1),
    ("counters_ext", "port_rcv_data_64"): (_counter(
        "legacy_data_received_bytes_total", "Number of data octets received on all links"), 4),
    ("counters_ext", "port_rcv_packets_64"): (_counter(
        "legacy_packets_received_total", "Number of data packets received on all links"), 1),
    ("counters_ext", "port_unicast_rcv_packets"): (_counter(
        "legacy_unicast_packets_received_total", "Number of unicast packets received"), 1),
    ("counters_ext", "port_unicast_xmit_packets"): (_counter(
        "legacy_unicast_packets_transmitted_total", "Number of unicast packets transmitted"), 1),
    ("counters_ext", "port_xmit_data_64"): (_counter(
        "legacy_data_transmitted_bytes_total", "Number of data octets transmitted on all links"), 4),
    ("counters_ext", "port_xmit_packets_64"): (_counter(
        "legacy_packets_transmitted_total", "Number of data packets received on all links"), 1),
    ("counters", "excessive_buffer_overrun_errors"): (_counter(
        "excessive_buffer_overrun_errors_total", "Number of times that OverrunErrors consecutive flow control update "
        "periods occurred, each having at least one overrun error."), 1),
    ("counters", "link_downed"): (_counter(
        "link_downed_total", "Number of times the link failed to recover from an error state and went down"), 1),
    ("counters", "link_error_recovery"): (_counter(
        "link_error_recovery_total", "Number of times the link successfully recovered from an error state"), 1),
    ("counters", "local_link_integrity_errors"): (_counter(
        "local_link_integrity_errors_total", "Number of times that the count of local physical errors exceeded the "
        "threshold specified by LocalPhyErrors."), 1),
    ("counters", "multicast_rcv_packets"): (_counter(
        "multicast_packets_received_total", "Number of multicast packets received (including errors)"), 1),
    ("counters", "multicast_xmit_packets"): (_counter(
        "multicast_packets_transmitted_total", "Number of multicast packets transmitted (including errors)"), 1),
    ("counters", "port_rcv_constraint_errors"): (_counter(
        "port_constraint_errors_received_total", "Number of packets received on the switch physical port that are "
        "discarded"), 1),
    ("counters", "port_xmit_constraint_errors"): (_counter(
        "port_constraint_errors_transmitted_total", "Number of packets not transmitted from the switch physical "
        "port"), 1),
    ("counters", "port_rcv_data"): (_counter(
        "port_data_received_bytes_total", "Number of data octets received on all links"), 4),
    ("counters", "port_xmit_data"): (_counter(
        "port_data_transmitted_bytes_total", "Number of data octets transmitted on all links"), 4),
    ("counters", "port_rcv_discards"): (_counter(
        "port_discards_received_total", "Number of inbound packets discarded by the port because the port is down "
        "or congested"), 1),
    ("counters", "port_xmit_discards"): (_counter(
        "port_discards_transmitted_total", "Number of outbound packets discarded by the port because the port is "
        "down or congested"), 1),
    ("counters", "port_rcv_errors"): (_counter(
        "port_errors_received_total", "Number of packets containing an error that were received on this port"), 1),
    ("counters", "port_rcv_packets"): (_counter(
        "port_packets_received_total", "Number of packets received on all VLs by this port (including errors)"), 1),
    ("counters", "port_xmit_packets"): (_counter(
        "port_packets_transmitted_total", "Number of packets transmitted on all VLs from this port (including "
        "errors)"), 1),
    ("counters", "port_xmit_wait"): (_counter(
        "port_transmit_wait_total", "Number of ticks during which the port had data to transmit but no data was "
        "sent during the entire tick"), 1),
    ("counters", "unicast_rcv_packets"): (_counter(
        "unicast_packets_received_total", "Number of unicast packets received (including errors)"), 1),
    ("counters", "unicast_xmit_packets"): (_counter(
        "unicast_packets_transmitted_total", "Number of unicast packets transmitted (including errors)"), 1),
    ("counters", "port_rcv_remote_physical_errors"): (_counter(
        "port_receive_remote_physical_errors_total", "Number of packets marked with the EBP (End of Bad Packet) "
        "delimiter received on the port."), 1),
    ("counters", "port_rcv_switch_relay_errors"): (_counter(
        "port_receive_switch_relay_errors_total", "Number of packets that could not be forwarded by the switch."), 1),
    ("counters", "symbol_error"): (_counter(
        "symbol_error_total", "Number of minor link errors detected on one or more physical lanes."), 1),
    ("counters", "VL15_dropped"): (_counter(
        "vl15_dropped_total", "Number of incoming VL15 packets dropped due to resource limitations."), 1),
}
# Read errors that mean "no such counter on this HCA": the counter is left out, as in procfs.
_SKIPPED_ERRORS = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL)


def parse_state(text: str) -> int:
    """``4: ACTIVE`` -> 4."""
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"state {text!r} is not 'ID: NAME'")
    value = go_int(parts[0].strip())
    if value is None or not 0 <= value < 1 << 32:
        raise ValueError(f"state {text!r} is not 'ID: NAME'")
    return value


def parse_rate(text: str) -> int:
    """``40 Gb/sec (4X QDR)`` -> bytes per second (Gb/s x 125000000; the number is parsed as a float32, as
    procfs does, then truncated)."""
    number, space, _ = text.partition(" ")
    if not space:
        raise ValueError(f"rate {text!r} has no unit")
    gbits = float(number.strip())
    gbits = struct.unpack("f", struct.pack("f", gbits))[0]
    return int(gbits * 125000000)


def _files(ports: list[_Port]) -> list[ProcFile]:
    """A device's files in the order its group reads them: each port's state, physical state, rate, counters."""
    return [pf for port in ports for pf in (port.state, port.physical_state, port.rate, *(c[2] for c in port.counters))]


def _text(pf: ProcFile, text: str | None) -> str:
    """A file's text as its group read it; a file the group could not read is read again, for its error."""
    return pf.read() if text is None else text


class _Port:
    __slots__ = ("labels", "state", "physical_state", "rate", "counters")

    def __init__(self, labels: tuple[str, str], state: ProcFile, physical_state: ProcFile, rate: ProcFile,
                 counters: list[tuple[FamilyInfo, int, ProcFile]]):
        self.labels, self.state, self.physical_state, self.rate = labels, state, physical_state, rate
        self.counters = counters


@register
class Infiniband(Collector):
    name = "infiniband"
    reports = ("infiniband",)
    families = (INFO, STATE, PHYSICAL_STATE, RATE, *(family for family, _ in COUNTERS.values()))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        # No infiniband class: unavailable, as there.
        self._devices = self.devices(os.path.join(ctx.sysfs, "class", "infiniband"), self._device)

    def _device(self, device: str, path: str, opener) -> tuple[tuple[str, str, str, str], list[_Port], LearnedGroup]:
        board, firmware = sys_read(os.path.join(path, "board_id")), sys_read(os.path.join(path, "fw_ver"))
        if board is None or firmware is None:
            raise OSError(f"{path}: no board_id or fw_ver")
        info = (device, board, firmware, sys_read(os.path.join(path, "hca_type")) or "")
        ports = []
        for port in sorted(os.listdir(os.path.join(path, "ports"))):
            if go_int(port) is None:
                raise ValueError(f"{path}/ports/{port}: not a port number")
            ports.append(self._open_port(device, port, os.path.join(path, "ports", port), opener))
        # Every file of every port in one C call, learned as one program (collectors/learned.py); none while a
        # file cannot be read, so that the parse sees each error (some are skipped, others fail the device).
        group = LearnedGroup(_files(ports), partial(self._device_rows, info, ports), learn_unreadable=False)
        return info, ports, group

    @staticmethod
    def _open_port(device: str, port: str, path: str, opener) -> _Port:
        counters = []
        for directory in ("counters", "counters_ext"):
            try:
                entries = sorted(os.scandir(os.path.join(path, directory)), key=lambda e: e.name)
            except FileNotFoundError:
                continue
            for entry in entries:
                spec = COUNTERS.get((directory, entry.name))
                if spec is None or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    counters.append((spec[0], spec[1], opener(entry.path)))
                except OSError as exc:
                    if exc.errno not in _SKIPPED_ERRORS:
                        raise
        return _Port((device, str(int(port))), opener(os.path.join(path, "state")),
                     opener(os.path.join(path, "phys_state")), opener(os.path.join(path, "rate")), counters)

    def collect(self, out: Sample) -> None:
        for _, rows in self._devices.each(self._read_device):  # unplugged (SR-IOV functions come and go): skipped
            out.extend(rows)

    @staticmethod
    def _read_device(device: tuple) -> list[tuple] | Block:
        return device[2].rows()

    @staticmethod
    def _device_rows(info: tuple[str, str, str, str], ports: list[_Port], texts: list[str | None]) -> list[tuple]:
        """The device's series from its ports' files, read as one group (the order of ``_files``)."""
        rows = [(INFO, info, 1)]
        at = iter(zip(_files(ports), texts))
        for port in ports:
            labels = port.labels
            rows.append((STATE, labels, parse_state(_text(*next(at)))))
            rows.append((PHYSICAL_STATE, labels, parse_state(_text(*next(at)))))
            rows.append((RATE, labels, parse_rate(_text(*next(at)))))
            for (family, factor, _), (pf, text) in zip(port.counters, at):
                try:
                    text = _text(pf, text).strip()
                except OSError as exc:
                    if exc.errno in _SKIPPED_ERRORS:
                        continue
                    raise
                value = go_int(text) if not text.startswith(("0x", "0X")) else int(text, 16)
                if value is None or value < 0:
                    if "N/A (no PMA)" in text:
                        continue
                    raise ValueError(f"{pf.path}: not a count: {text!r}")
                rows.append((family, labels, value * factor))
        return rows
