"""Which devices and filesystems are sampled: node_exporter's default filters.

The defaults are those of the node_exporter on our platform (1.5.0 as Debian 12
packages it: `prometheus-node-exporter --help`), so that shm-exporter and
node_exporter show the same series on the same host out of the box.  Debian's
build differs from upstream's defaults: it leaves out the loopback interface
and everything under /run, /mnt and /media.  Each filter can be overridden on
the publisher's command line.
"""

from __future__ import annotations

import re

DISK_EXCLUDE = r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"
MOUNT_POINT_EXCLUDE = r"^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
FS_TYPE_EXCLUDE = (r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|"
                   r"iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|"
                   r"squashfs|sysfs|tracefs)$")
NET_EXCLUDE = r"^lo$"


def _compile(pattern: str) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


class Filters:
    """Which disks, mounts and interfaces the collectors sample (node_exporter's exclude and include flags)."""

    def __init__(self, disk_exclude: str = DISK_EXCLUDE, mount_point_exclude: str = MOUNT_POINT_EXCLUDE,
                 fs_type_exclude: str = FS_TYPE_EXCLUDE, net_exclude: str = NET_EXCLUDE,
                 disk_include: str = "", net_include: str = "") -> None:
        """node_exporter's device-include: when set, only matching devices are sampled (the CLI empties the
        exclude when only the include is given, as node_exporter has them mutually exclusive).
        re.error propagates: the CLI turns it into a usage error."""
        self.disk_exclude, self.mount_point_exclude = disk_exclude, mount_point_exclude
        self.fs_type_exclude, self.net_exclude = fs_type_exclude, net_exclude
        self.disk_include, self.net_include = disk_include, net_include
        self._disk = _compile(disk_exclude)
        self._mount = _compile(mount_point_exclude)
        self._fstype = _compile(fs_type_exclude)
        self._net = _compile(net_exclude)
        self._disk_in = _compile(disk_include)
        self._net_in = _compile(net_include)

        # Device names repeat every sample (the filters run on each line of /proc/diskstats and net/dev):
        # each name's decision is kept, bounded (loop devices and veths come and go).
        self._disks_decided: dict[str, bool] = {}
        self._nets_decided: dict[str, bool] = {}

    def disk_excluded(self, device: str) -> bool:
        return _decided(self._disks_decided, device, self._disk, self._disk_in)

    def fs_excluded(self, mountpoint: str, fstype: str) -> bool:
        return bool((self._mount and self._mount.search(mountpoint))
                    or (self._fstype and self._fstype.search(fstype)))

    def net_excluded(self, device: str) -> bool:
        return _decided(self._nets_decided, device, self._net, self._net_in)


_REMEMBERED = 1024  # device names whose decision is kept


def _decided(decisions: dict[str, bool], name: str, exclude: re.Pattern[str] | None,
             include: re.Pattern[str] | None) -> bool:
    decision = decisions.get(name)
    if decision is None:
        if len(decisions) >= _REMEMBERED:
            decisions.clear()
        decision = decisions[name] = bool((exclude and exclude.search(name)) or (include and not include.search(name)))
    return decision
