"""A stand-in for systemd's manager on a private D-Bus bus, answering from a JSON file (tests only).

    python fake_systemd.py BUS_ADDRESS FIXTURE.json

It owns org.freedesktop.systemd1 and answers what node_exporter's systemd collector asks: ListUnits,
and Properties.Get of the manager (Version, SystemState) and of each unit at systemd's object path for
it; anything else gets the D-Bus error systemd would send.  It prints "ready" once it owns the name.
"""

from __future__ import annotations

import json
import sys

from jeepney import MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

from shm_metrics.publisher.collectors.systemd import unit_path

MANAGER_PATH = "/org/freedesktop/systemd1"


def main(address: str, fixture_path: str) -> None:
    with open(fixture_path) as f:
        fixture = json.load(f)
    units = [tuple(unit) for unit in fixture["units"]]
    by_path = {unit_path(unit[0]): unit[0] for unit in units}
    conn = open_dbus_connection(bus=address)
    conn.send_and_get_reply(message_bus.RequestName("org.freedesktop.systemd1"))
    print("ready", flush=True)
    while True:
        msg = conn.receive()
        if msg.header.message_type != MessageType.method_call:
            continue
        path = msg.header.fields.get(1)  # HeaderFields.path
        member = msg.header.fields.get(3)  # HeaderFields.member
        if member == "ListUnits" and path == MANAGER_PATH:
            conn.send(new_method_return(msg, "a(ssssssouso)", (units,)))
            continue
        if member == "Get":
            interface, name = msg.body
            if path == MANAGER_PATH:
                props = fixture["manager"].get(interface, {})
            else:
                props = fixture["properties"].get(by_path.get(path, ""), {}).get(interface, {})
            if name in props:
                signature, value = props[name]
                conn.send(new_method_return(msg, "v", ((signature, value),)))
                continue
            conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownProperty", "s", (f"no {name}",)))
            continue
        conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s", (f"no {member}",)))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
