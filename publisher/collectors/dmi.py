"""/sys/class/dmi/id: node_exporter's ``dmi`` collector (BIOS, board, chassis and product identity).

Read once, when the collector starts, as node_exporter does: DMI does not
change while the system runs.  node_dmi_info carries one label per DMI
attribute this machine provides (the family is declared from them); files
only root may read (serials, UUID) are left out for other users.  Without
DMI the collector is unavailable, as there.
"""

from __future__ import annotations

import os

from shm_metrics.publisher.collectors import Collector, Context, Missing, Sample, gauge, register
from shm_metrics.publisher.collectors.sysfs_util import go_text, sys_read_raw

HELP = ("A metric with a constant '1' value labeled by bios_date, bios_release, bios_vendor, bios_version, "
        "board_asset_tag, board_name, board_serial, board_vendor, board_version, chassis_asset_tag, "
        "chassis_serial, chassis_vendor, chassis_version, product_family, product_name, product_serial, "
        "product_sku, product_uuid, product_version, system_vendor if provided by DMI.")
# label -> file in /sys/class/dmi/id
LABELS = {"bios_date": "bios_date", "bios_release": "bios_release", "bios_vendor": "bios_vendor",
          "bios_version": "bios_version", "board_asset_tag": "board_asset_tag", "board_name": "board_name",
          "board_serial": "board_serial", "board_vendor": "board_vendor", "board_version": "board_version",
          "chassis_asset_tag": "chassis_asset_tag", "chassis_serial": "chassis_serial",
          "chassis_vendor": "chassis_vendor", "chassis_version": "chassis_version",
          "product_family": "product_family", "product_name": "product_name", "product_serial": "product_serial",
          "product_sku": "product_sku", "product_uuid": "product_uuid", "product_version": "product_version",
          "system_vendor": "sys_vendor"}


@register
class Dmi(Collector):
    name = "dmi"
    reports = ("dmi",)
    described = (("node_dmi_info", "gauge", "one label per DMI attribute provided (bios_date ... system_vendor)",
                  HELP),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        root = os.path.join(ctx.sysfs, "class", "dmi", "id")
        values: dict[str, str] = {}
        try:
            names = set(os.listdir(root))
        except FileNotFoundError:
            names = set()
        for label, file in LABELS.items():
            path = os.path.join(root, file)
            if file not in names or not os.path.isfile(path) or os.path.islink(path):
                continue
            raw = sys_read_raw(path)
            if raw is not None:  # unreadable (root-only serials): no such label, as there
                values[label] = go_text(raw).strip()
        if not values:
            raise Missing(f"no DMI information in {root}", root)
        self._info = (gauge("node_dmi_info", HELP, *values), tuple(values.values()))
        self.families = (self._info[0],)

    def collect(self, out: Sample) -> None:
        out.add(self._info[0], self._info[1], 1)
