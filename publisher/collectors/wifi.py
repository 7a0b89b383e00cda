"""WiFi interfaces and stations: node_exporter's ``wifi`` collector (off by default).

node_exporter reads nl80211 (generic netlink) through a Go library; so does
it here only from node_exporter's test fixtures (option ``wifi.fixtures``: a
directory with ``interfaces.json`` and, per interface, ``<name>/bss.json``
and ``<name>/stationinfo.json``, as node_exporter reads them).  Without
fixtures, a host with no wireless interface has nothing to report (the
collector is unavailable, as node_exporter's fails then); a host with one is
refused at start with the reason: reading nl80211 (family lookup, interface,
station and scan dumps with their nested attributes) is a protocol client of
its own, not written here.
"""

from __future__ import annotations

import base64
import glob
import json
import os

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register

_STATION = ("device", "mac_address")
FREQUENCY = gauge("node_wifi_interface_frequency_hertz",
                  "The current frequency a WiFi interface is operating at, in hertz.", "device")
STATION_INFO = gauge("node_wifi_station_info",
                     "Labeled WiFi interface station information as provided by the operating system.",
                     "device", "bssid", "ssid", "mode")
CONNECTED = counter("node_wifi_station_connected_seconds_total",
                    "The total number of seconds a station has been connected to an access point.", *_STATION)
INACTIVE = gauge("node_wifi_station_inactive_seconds",
                 "The number of seconds since any wireless activity has occurred on a station.", *_STATION)
RECEIVE_BITRATE = gauge("node_wifi_station_receive_bits_per_second",
                        "The current WiFi receive bitrate of a station, in bits per second.", *_STATION)
TRANSMIT_BITRATE = gauge("node_wifi_station_transmit_bits_per_second",
                         "The current WiFi transmit bitrate of a station, in bits per second.", *_STATION)
RECEIVE_BYTES = counter("node_wifi_station_receive_bytes_total",
                        "The total number of bytes received by a WiFi station.", *_STATION)
TRANSMIT_BYTES = counter("node_wifi_station_transmit_bytes_total",
                         "The total number of bytes transmitted by a WiFi station.", *_STATION)
SIGNAL = gauge("node_wifi_station_signal_dbm", "The current WiFi signal strength, in decibel-milliwatts (dBm).",
               *_STATION)
RETRIES = counter("node_wifi_station_transmit_retries_total",
                  "The total number of times a station has had to retry while sending a packet.", *_STATION)
FAILED = counter("node_wifi_station_transmit_failed_total",
                 "The total number of times a station has failed to send a packet.", *_STATION)
BEACON_LOSS = counter("node_wifi_station_beacon_loss_total",
                      "The total number of times a station has detected a beacon loss.", *_STATION)

_NS_PER_SECOND = 1_000_000_000
# Station families and the (lower-cased) field of a station record each comes from; durations are nanoseconds.
_STATION_FIELDS = ((RECEIVE_BITRATE, "receivebitrate"), (TRANSMIT_BITRATE, "transmitbitrate"),
                   (RECEIVE_BYTES, "receivedbytes"), (TRANSMIT_BYTES, "transmittedbytes"), (SIGNAL, "signal"),
                   (RETRIES, "transmitretries"), (FAILED, "transmitfailed"), (BEACON_LOSS, "beaconloss"))
# A BSS's status: authenticated (0) or associated (1) is a client, 2 joined an ad-hoc network.
_MODES = {0: "client", 1: "client", 2: "ad-hoc"}


def _seconds(nanoseconds: int) -> float:
    # As Go's Duration.Seconds(): whole seconds plus the remainder, so 0.4 s prints as 0.4.
    whole, rest = divmod(int(nanoseconds), _NS_PER_SECOND)
    return whole + rest / 1e9


def _mac(encoded: str | None) -> str:
    """A hardware address as the fixture stores it (base64 of the bytes) in Go's text form (aa:bb:...)."""
    raw = base64.b64decode(encoded) if encoded else b""
    return ":".join(f"{byte:02x}" for byte in raw)


def _lower_keys(record: dict) -> dict:
    # Go's JSON decoding matches field names without regard to case.
    return {key.lower(): value for key, value in record.items()}


def _load(path: str):
    """A fixture file's JSON, or None when it does not exist (that interface has no BSS or stations)."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


@register
class Wifi(Collector):
    name = "wifi"
    reports = ("wifi",)
    default_enabled = False
    families = (FREQUENCY, STATION_INFO, CONNECTED, INACTIVE, *(family for family, _ in _STATION_FIELDS))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._fixtures = str(ctx.option("wifi.fixtures") or "")
        if not self._fixtures:
            found = glob.glob(f"{ctx.sysfs}/class/net/*/wireless")
            wireless = sorted(os.path.basename(os.path.dirname(path)) for path in found)
            if not wireless:
                raise FileNotFoundError("no wireless interface on this host")
            raise OSError(f"wireless interfaces {', '.join(wireless)}: reading nl80211 is not supported, "
                          "only node_exporter's fixtures (wifi.fixtures)")
        if _load(os.path.join(self._fixtures, "interfaces.json")) is None:
            raise FileNotFoundError(f"no interfaces.json in {self._fixtures}")

    def collect(self, out: Sample) -> None:
        add = out.add
        for interface in map(_lower_keys, _load(os.path.join(self._fixtures, "interfaces.json")) or []):
            device = interface.get("name") or ""
            if not device:
                continue
            add(FREQUENCY, (device,), interface.get("frequency", 0) * 1e6)
            bss = _load(os.path.join(self._fixtures, device, "bss.json"))
            if bss is not None:
                bss = _lower_keys(bss)
                add(STATION_INFO, (device, _mac(bss.get("bssid")), bss.get("ssid", ""),
                                   _MODES.get(bss.get("status", 0), "unknown")), 1)
            for station in map(_lower_keys, _load(os.path.join(self._fixtures, device, "stationinfo.json")) or []):
                labels = (device, _mac(station.get("hardwareaddr")))
                add(CONNECTED, labels, _seconds(station.get("connected", 0)))
                add(INACTIVE, labels, _seconds(station.get("inactive", 0)))
                for family, field in _STATION_FIELDS:
                    add(family, labels, station.get(field, 0))
