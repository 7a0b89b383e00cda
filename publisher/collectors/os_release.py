"""/etc/os-release (or /usr/lib/os-release): node_exporter's ``os`` collector.

Re-read every ``refresh_seconds`` (it changes with an OS upgrade).
"""

from __future__ import annotations

import re

from shm_metrics.publisher.collectors import Collector, Sample, gauge, register

_KEYS = ("BUILD_ID", "ID", "ID_LIKE", "IMAGE_ID", "IMAGE_VERSION", "NAME", "PRETTY_NAME", "VARIANT", "VARIANT_ID",
         "VERSION", "VERSION_CODENAME", "VERSION_ID")
INFO = gauge("node_os_info", "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, "
             "image_version, name, pretty_name, variant, variant_id, version, version_codename, version_id.",
             *(k.lower() for k in _KEYS))
VERSION = gauge("node_os_version", "Metric containing the major.minor part of the OS version.", "id", "id_like", "name")
_VERSION = re.compile(r"^[0-9]+\.?[0-9]*")
_PATHS = ("etc/os-release", "usr/lib/os-release")


def parse(text: str) -> dict[str, str]:
    """KEY=VALUE lines with shell quoting (os-release(5)); comments and blank lines skipped."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r'\\([\\$"`])', r"\1", value)
        out[key] = value
    return out


@register
class OsRelease(Collector):
    name = "os"
    reports = ("os",)
    families = (INFO, VERSION)
    refresh_seconds = 60.0

    def collect(self, out: Sample) -> None:
        root = self.ctx.rootfs.rstrip("/")
        for path in _PATHS:
            try:
                with open(f"{root}/{path}") as f:
                    release = parse(f.read())
                break
            except FileNotFoundError:
                continue
        else:
            raise FileNotFoundError("no os-release file")
        out.add(INFO, tuple(release.get(k, "") for k in _KEYS), 1)
        major_minor = _VERSION.match(release.get("VERSION_ID", ""))
        if major_minor and float(major_minor[0]) > 0:
            out.add(VERSION, (release.get("ID", ""), release.get("ID_LIKE", ""), release.get("NAME", "")),
                    float(major_minor[0]))
