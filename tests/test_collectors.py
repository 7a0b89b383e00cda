"""The publisher's node_exporter collectors on fake /proc and /sys trees: exact names, units and values.

Each fixture is the kernel's real format (copied from a host, trimmed); the
expected values are worked out by hand from node_exporter 1.5.0's rules
(kB x 1024, sectors x 512, ms / 1000, us / 1e6, hex...).  The whole set is
compared with a real node_exporter in test_exporter_compare.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from shm_metrics.publisher.collectors import (
    Context,
    Sample,
    arp,
    conntrack,
    diskstats,
    entropy,
    filesystem,
    meminfo,
    netdev,
    netstat,
    numbers,
    os_release,
    pressure,
    sockstat,
    softnet,
    udp_queues,
    vmstat,
)
from shm_metrics.publisher.filters import Filters
from shm_metrics.publisher.sampler import Sampler


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def collect(cls, root: Path, **ctx) -> dict[str, dict[tuple, float]]:
    """family name -> {label values: value} from one collect() of ``cls`` on the fake tree."""
    c = cls(Context(procfs=str(root / "proc"), sysfs=str(root / "sys"), **ctx))
    try:
        out = Sample()
        c.collect(out)
    finally:
        c.close()
    result: dict[str, dict[tuple, float]] = {}
    for fam, labels, value in out.sampled_series():
        assert fam in c.families, f"{fam.name} emitted but not declared"
        assert len(labels) == len(fam.labels), fam.name
        result.setdefault(fam.name, {})[labels] = value
    return result


def test_meminfo_every_field_in_node_exporters_names_and_units(tmp_path):
    write(tmp_path / "proc/meminfo", "MemTotal:       16000000 kB\nActive(anon):     123 kB\n"
          "HugePages_Total:       7\nHugepagesize:       2048 kB\n")
    got = collect(meminfo.Meminfo, tmp_path)
    assert got == {"node_memory_MemTotal_bytes": {(): 16000000 * 1024},
                   "node_memory_Active_anon_bytes": {(): 123 * 1024}, "node_memory_HugePages_Total": {(): 7},
                   "node_memory_Hugepagesize_bytes": {(): 2048 * 1024}}
    c = meminfo.Meminfo(Context(procfs=str(tmp_path / "proc")))
    assert {f.help for f in c.families} >= {"Memory information field Active_anon_bytes.",
                                            "Memory information field HugePages_Total."}
    c.close()


def test_diskstats_all_fields_converted(tmp_path):
    # 20 fields (kernel >= 5.5): discards and flushes included; a 14-field line has only the first 11.
    write(tmp_path / "proc/diskstats",
          " 254 0 vda 100 2 3000 400 50 6 7000 800 1 900 1200 11 12 1300 1400 15 1600\n"
          "   8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n"
          "   7 0 loop0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n")
    got = collect(diskstats.Diskstats, tmp_path)
    assert got["node_disk_reads_completed_total"] == {("vda",): 100, ("sda",): 1}  # loop0: excluded by default
    assert got["node_disk_read_bytes_total"][("vda",)] == 3000 * 512
    assert got["node_disk_read_time_seconds_total"][("vda",)] == 0.4
    assert got["node_disk_io_now"][("vda",)] == 1
    assert got["node_disk_io_time_seconds_total"][("vda",)] == 0.9
    assert got["node_disk_io_time_weighted_seconds_total"] == {("vda",): 1.2, ("sda",): 0.011}
    assert got["node_disk_discarded_sectors_total"] == {("vda",): 1300}  # sectors, as node_exporter has it
    assert got["node_disk_discards_merged_total"] == {("vda",): 12}
    assert got["node_disk_flush_requests_time_seconds_total"] == {("vda",): 1.6}
    assert ("vda", "254", "0", "", "", "", "", "") in got["node_disk_info"]


def test_netdev_all_columns_and_nohandler_from_sysfs(tmp_path, monkeypatch):
    # netlink (the default) reads the running kernel: here, the fake tree stands for it
    write(tmp_path / "proc/net/dev",
          "Inter-|   Receive                                                |  Transmit\n"
          " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
          "carrier compressed\n"
          "    lo: 10 1 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n"
          "  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n")
    write(tmp_path / "sys/class/net/eth0/statistics/rx_nohandler", "17\n")
    monkeypatch.setattr(netdev, "LIVE_PROCFS", str(tmp_path / "proc"))
    monkeypatch.setattr(netdev, "LIVE_SYSFS", str(tmp_path / "sys"))
    got = collect(netdev.Netdev, tmp_path)
    names = ["receive_bytes", "receive_packets", "receive_errs", "receive_drop", "receive_fifo", "receive_frame",
             "receive_compressed", "receive_multicast", "transmit_bytes", "transmit_packets", "transmit_errs",
             "transmit_drop", "transmit_fifo", "transmit_colls", "transmit_carrier", "transmit_compressed"]
    for i, key in enumerate(names, 1):
        assert got[f"node_network_{key}_total"] == {("eth0",): i}, key  # lo: Debian's default filter
    assert got["node_network_receive_nohandler_total"] == {("eth0",): 17}
    # without netlink: <procfs>/net/dev (the live one is gone here), no nohandler; device-include drops Debian's ^lo$
    monkeypatch.setattr(netdev, "LIVE_PROCFS", str(tmp_path / "nowhere"))
    got = collect(netdev.Netdev, tmp_path, options={"netdev.netlink": False},
                  filters=Filters(net_exclude="", net_include="^lo$"))
    assert got["node_network_receive_bytes_total"] == {("lo",): 10}
    assert "node_network_receive_nohandler_total" not in got


def test_vmstat_and_netstat_keep_node_exporters_default_fields(tmp_path):
    write(tmp_path / "proc/vmstat", "nr_free_pages 5\npgpgin 10\npgmajfault 3\noom_kill 1\npswpout 2\n")
    assert collect(vmstat.Vmstat, tmp_path) == {"node_vmstat_pgpgin": {(): 10}, "node_vmstat_pgmajfault": {(): 3},
                                                "node_vmstat_oom_kill": {(): 1}, "node_vmstat_pswpout": {(): 2}}
    write(tmp_path / "proc/net/netstat", "TcpExt: SyncookiesSent ListenDrops TW\nTcpExt: 1 2 3\n"
          "IpExt: InOctets OutOctets InNoRoutes\nIpExt: 10 20 30\n")
    write(tmp_path / "proc/net/snmp", "Ip: Forwarding DefaultTTL\nIp: 2 64\nTcp: CurrEstab InErrs\nTcp: 4 5\n")
    write(tmp_path / "proc/net/snmp6", "Ip6InOctets                \t7\nUdp6InErrors 8\nIp6InReceives 9\n")
    got = collect(netstat.Netstat, tmp_path)
    assert got == {"node_netstat_TcpExt_SyncookiesSent": {(): 1}, "node_netstat_TcpExt_ListenDrops": {(): 2},
                   "node_netstat_IpExt_InOctets": {(): 10}, "node_netstat_IpExt_OutOctets": {(): 20},
                   "node_netstat_Ip_Forwarding": {(): 2}, "node_netstat_Tcp_CurrEstab": {(): 4},
                   "node_netstat_Tcp_InErrs": {(): 5}, "node_netstat_Ip6_InOctets": {(): 7},
                   "node_netstat_Udp6_InErrors": {(): 8}}
    c = netstat.Netstat(Context(procfs=str(tmp_path / "proc")))
    assert {f.name: (f.type, f.help) for f in c.families}["node_netstat_TcpExt_ListenDrops"] == (
        "untyped", "Statistic TcpExtListenDrops.")
    c.close()


def test_sockstat_with_mem_bytes(tmp_path):
    write(tmp_path / "proc/net/sockstat", "sockets: used 18\nTCP: inuse 5 orphan 0 tw 45 alloc 6 mem 47\n"
          "FRAG: inuse 0 memory 0\n")
    write(tmp_path / "proc/net/sockstat6", "TCP6: inuse 3\n")
    got = collect(sockstat.Sockstat, tmp_path)
    page = os.sysconf("SC_PAGE_SIZE")
    assert got == {"node_sockstat_sockets_used": {(): 18}, "node_sockstat_TCP_inuse": {(): 5},
                   "node_sockstat_TCP_orphan": {(): 0}, "node_sockstat_TCP_tw": {(): 45},
                   "node_sockstat_TCP_alloc": {(): 6}, "node_sockstat_TCP_mem": {(): 47},
                   "node_sockstat_TCP_mem_bytes": {(): 47 * page}, "node_sockstat_FRAG_inuse": {(): 0},
                   "node_sockstat_FRAG_memory": {(): 0}, "node_sockstat_TCP6_inuse": {(): 3}}


def test_small_proc_collectors(tmp_path):
    proc = tmp_path / "proc"
    for res, full in (("cpu", ""), ("io", "full avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\n"),
                      ("memory", "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")):
        write(proc / f"pressure/{res}", f"some avg10=0.00 avg60=0.01 avg300=0.04 total=3257405\n{full}")
    got = collect(pressure.Pressure, tmp_path)
    # node_exporter divides by 1000 twice, and prints the result's rounding: 3.2574050000000003
    assert got["node_pressure_cpu_waiting_seconds_total"] == {(): 3257405 / 1000.0 / 1000.0}
    assert got["node_pressure_io_stalled_seconds_total"] == {(): 2.5}
    assert "node_pressure_cpu_stalled_seconds_total" not in got

    write(proc / "net/softnet_stat", "00030d35 00000002 0000000a 0 0\n00021db5 00000000 00000001 0 0\n")
    got = collect(softnet.Softnet, tmp_path)
    assert got["node_softnet_processed_total"] == {("0",): 0x30d35, ("1",): 0x21db5}
    assert got["node_softnet_times_squeezed_total"] == {("0",): 10, ("1",): 1}

    write(proc / "sys/net/netfilter/nf_conntrack_count", "12\n")
    write(proc / "sys/net/netfilter/nf_conntrack_max", "262144\n")
    write(proc / "net/stat/nf_conntrack", "entries  clashres found new invalid ignore delete chainlength insert "
          "insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n"
          + "0000000c  00000000 00000010 00000000 00000001 00000002 00000000 00000000 00000003 00000000 "
            "00000000 00000000 00000000  00000000 00000000 00000000 00000004\n" * 2)
    got = collect(conntrack.Conntrack, tmp_path)
    assert got["node_nf_conntrack_entries"] == {(): 12} and got["node_nf_conntrack_entries_limit"] == {(): 262144}
    assert got["node_nf_conntrack_stat_found"] == {(): 32}  # summed over the CPUs' lines
    assert got["node_nf_conntrack_stat_search_restart"] == {(): 8}

    write(proc / "sys/kernel/random/entropy_avail", "256\n")
    write(proc / "sys/kernel/random/poolsize", "256\n")
    assert collect(entropy.Entropy, tmp_path) == {"node_entropy_available_bits": {(): 256},
                                                  "node_entropy_pool_size_bits": {(): 256}}

    write(proc / "net/arp", "IP address       HW type     Flags       HW address            Mask     Device\n"
          "192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0\n"
          "192.0.2.2        0x1         0x2         02:fc:00:00:00:06     *        eth0\n"
          "192.0.2.3        0x1         0x0         00:00:00:00:00:00     *        eth1\n")
    assert collect(arp.Arp, tmp_path) == {"node_arp_entries": {("eth0",): 2, ("eth1",): 1}}

    header = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    write(proc / "net/udp", header + "  0: 00000000:0044 00000000:0000 07 00000010:00000200 00:00000000 00000000 "
          "0 0 1 2 0\n  1: 00000000:0045 00000000:0000 07 00000001:00000000 00:00000000 00000000 0 0 1 2 0\n")
    got = collect(udp_queues.UdpQueues, tmp_path)  # no udp6: IPv6 off, its series absent
    assert got == {"node_udp_queues": {("tx", "v4"): 0x11, ("rx", "v4"): 0x200}}


def test_os_release_quoting_and_version(tmp_path):
    write(tmp_path / "etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
          'VERSION_ID="12"\nVERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n# comment\n')
    got = collect(os_release.OsRelease, tmp_path, rootfs=str(tmp_path))
    info = got["node_os_info"]
    assert list(info) == [("", "debian", "", "", "", "Debian GNU/Linux", "Debian GNU/Linux 12 (bookworm)", "", "",
                           "12 (bookworm)", "bookworm", "12")]
    assert got["node_os_version"] == {("debian", "", "Debian GNU/Linux"): 12.0}


def test_filesystem_readonly_files_and_device_error(tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir()
    write(tmp_path / "proc/1/mountinfo",
          f"40 27 0:40 / {ok} ro,relatime - ext4 /dev/sdb rw\n"
          "41 27 0:41 / /nonexistent-shm-metrics-test rw - ext4 /dev/sdc rw\n")
    got = collect(filesystem.Filesystem, tmp_path, filters=Filters())
    labels = ("/dev/sdb", "ext4", str(ok))
    st = os.statvfs(ok)
    assert got["node_filesystem_readonly"] == {labels: 1}
    assert got["node_filesystem_files"] == {labels: st.f_files}
    assert got["node_filesystem_device_error"] == {labels: 0, ("/dev/sdc", "ext4", "/nonexistent-shm-metrics-test"): 1}
    assert ("/dev/sdc", "ext4", "/nonexistent-shm-metrics-test") not in got["node_filesystem_size_bytes"]


def test_missing_files_mean_absent_families_and_success_zero(tmp_path):
    # A /proc without pressure, conntrack, sockstat...: those collectors are left out (no series, never 0)
    # and node_scrape_collector_success says 0 for them, as node_exporter does.
    proc = tmp_path / "proc"
    write(proc / "stat", "cpu  1 0 1 1 0 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\nbtime 1700000000\n")
    write(proc / "loadavg", "0.5 0.25 0.1 1/100 4242\n")
    sampler = Sampler(procfs=str(proc), sysfs=str(tmp_path / "sys"), rootfs=str(tmp_path),
                      options={"netdev.netlink": False})  # else netdev reads the running kernel
    try:
        sample = sampler.sample()
    finally:
        sampler.close()
    names = {fam.name for fam, _, _ in sample.all_series()}
    assert "node_load1" in names and "node_boot_time_seconds" in names
    assert not any(n.startswith(("node_pressure_", "node_nf_conntrack", "node_memory_", "node_sockstat_"))
                   for n in names)
    success = {labels[0]: value for fam, labels, value in sample.all_series()
               if fam.name == "node_scrape_collector_success"}
    assert success["loadavg"] == 1 and success["cpu"] == 1 and success["stat"] == 1
    for collector in ("pressure", "conntrack", "meminfo", "sockstat", "netdev", "os"):
        assert success[collector] == 0, collector
    durations = [v for fam, _, v in sample.all_series() if fam.name == "node_scrape_collector_duration_seconds"]
    assert len(durations) == len(success) and all(d >= 0 for d in durations)


@pytest.mark.parametrize("cls", [meminfo.Meminfo, netstat.Netstat, vmstat.Vmstat])
def test_host_collectors_declare_what_they_emit(cls):
    # On the real host: every series belongs to a declared family (the catalog is the segment's contract).
    c = cls(Context())
    try:
        out = Sample()
        c.collect(out)
    finally:
        c.close()
    assert out.sampled_series() and {fam for fam, _, _ in out.sampled_series()} <= set(c.families)


def test_vmstat_finds_its_fields_when_the_kernel_moves_them(tmp_path):
    write(tmp_path / "proc/vmstat", "nr_free_pages 5\npgpgin 10\npgmajfault 3\n")
    c = vmstat.Vmstat(Context(procfs=str(tmp_path / "proc")))
    try:
        write(tmp_path / "proc/vmstat", "pgmajfault 4\nnew_field 1\nnr_free_pages 5\npgpgin 11\n")
        out = Sample()
        c.collect(out)
    finally:
        c.close()
    got = {fam.name: value for fam, _, value in out.sampled_series()}
    assert got == {"node_vmstat_pgpgin": 11, "node_vmstat_pgmajfault": 4}


def test_sizing_sample_is_the_first_one_published(tmp_path):
    # The publisher sizes the family sections from one sample; that same sample is then published first,
    # so its CPU share is still the average since boot (not a few milliseconds' worth).
    write(tmp_path / "proc/stat", "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 100 0 50 800 50 0 0 0 0 0\n")
    sampler = Sampler(procfs=str(tmp_path / "proc"), sysfs=str(tmp_path / "sys"), rootfs=str(tmp_path))
    try:
        capacities = sampler.family_capacities()
        write(tmp_path / "proc/stat", "cpu  100 0 50 900 50 0 0 0 0 0\ncpu0 100 0 50 900 50 0 0 0 0 0\n")
        first, second = sampler.sample(), sampler.sample()
    finally:
        sampler.close()
    assert capacities["metrics"] == len(sampler.catalog) and capacities["series"] >= 256
    assert first.scalars["cpu_percent"] == pytest.approx(15.0)  # since boot: 150 busy of 1000
    assert second.scalars["cpu_percent"] == 0.0  # then the deltas: 100 idle ticks, nothing busy


def test_procfile_reads_page_at_a_time_proc_files_to_the_end():
    """seq_file tables come about a page per read: a short read is not the end of the file."""
    import subprocess

    from shm_metrics.publisher.collectors import ProcFile

    # A sleeping interpreter holding 200 mappings of alternating protection (so that none merge): a maps
    # file of several pages that does not change while it sleeps.
    child = ("import mmap, time\n"
             "keep = [mmap.mmap(-1, 4096, prot=mmap.PROT_READ | (mmap.PROT_WRITE if i % 2 else 0))"
             " for i in range(200)]\n"
             "print(flush=True)\n"
             "time.sleep(60)\n")
    sleeper = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    try:
        sleeper.stdout.readline()  # started, its libraries mapped
        path = f"/proc/{sleeper.pid}/maps"
        pf = ProcFile(path)
        try:
            first = os.pread(pf.fd, 1 << 16, 0)
            whole = open(path, "rb").read()
            assert len(first) < len(whole), "this kernel returns maps whole: the test proves nothing here"
            assert pf.read_bytes() == whole
        finally:
            pf.close()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_conntrack_sums_from_the_numbers_while_the_file_keeps_its_structure(tmp_path, monkeypatch):
    """After one Python parse, the column sums come from _scan's numbers (strided sums) and equal the parse's:
    after values change, after a CPU line is added (parsed again), and with a value a double cannot sum exactly
    (parsed, exact)."""
    if not numbers.AVAILABLE:
        pytest.skip("the C extension is not built here")
    proc = tmp_path / "proc"
    write(proc / "sys/net/netfilter/nf_conntrack_count", "12\n")
    write(proc / "sys/net/netfilter/nf_conntrack_max", "262144\n")
    header = ("entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop "
              "icmp_error  expect_new expect_create expect_delete search_restart\n")

    def line(found: int, restart: int) -> str:
        return (f"0000000c  00000000 {found:08x} 00000000 00000001 00000002 00000000 00000000 00000003 00000000 "
                f"00000000 00000000 00000000  00000000 00000000 00000000 {restart:08x}\n")

    stat = proc / "net/stat/nf_conntrack"
    write(stat, header)
    c = conntrack.Conntrack(Context(procfs=str(proc), sysfs=str(tmp_path / "sys")))
    parses = []
    real = c._parse
    monkeypatch.setattr(c, "_parse", lambda: parses.append(1) or real())

    def sample() -> dict[str, float]:
        out = Sample()
        c.collect(out)
        return {fam.name: value for fam, _, value in out.sampled_series()}

    try:
        for lines, parsed, found, restart in (
                ([line(16, 4)] * 2, 1, 32, 8),
                ([line(16, 4)] * 2, 0, 32, 8),  # the same numbers: summed in C
                ([line(0x10000, 1), line(5, 0xffff)], 0, 0x10005, 0x10000),
                ([line(1, 1)] * 3, 1, 3, 3),  # a CPU more: another structure, parsed again
                ([line(1, 1)] * 3, 0, 3, 3),
                ([line(0xffffffffffffff, 1), line(1, 1), line(1, 1)], 1, 0xffffffffffffff + 2, 3)):  # exact
            stat.write_text(header + "".join(lines))
            parses.clear()
            got = sample()
            assert len(parses) == parsed
            assert got["node_nf_conntrack_stat_found"] == found
            assert got["node_nf_conntrack_stat_search_restart"] == restart
    finally:
        c.close()
