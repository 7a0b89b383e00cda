"""Helpers for the exporter tests: real processes on 127.0.0.1, stopped by their own PID."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

EXPORTER = [sys.executable, "-m", "shm_metrics.readers.exporter"]


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for daemons that cannot report the one they got)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(binary: str, package: str) -> str:
    """The path of ``binary``, or skip the test naming the Debian package that provides it."""
    path = shutil.which(binary) or (f"/usr/bin/{binary}" if os.access(f"/usr/bin/{binary}", os.X_OK) else None)
    if not path:
        pytest.skip(f"{binary} not found: install the Debian package {package} (.ci/run does)")
    return path


class Process:
    """A background process whose output is drained by a thread; stopped by its own PID."""

    def __init__(self, argv: list[str], env: dict | None = None, cwd: str | None = None):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.05)  # let the drain thread catch up
                raise AssertionError(f"{self.argv[0]} exited {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {needle!r} from {self.argv}:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self._reader.join(5)
        self.proc.stdout.close()
        return self.proc.returncode


class Exporter(Process):
    """A real shm-exporter on 127.0.0.1 and a port it picked itself (reported in its log)."""

    def __init__(self, name: str, *args: str, listen: str = "127.0.0.1:0", env: dict | None = None):
        super().__init__([*EXPORTER, "--name", name, "--web.listen-address", listen, *args], env=env)
        line = self.wait_for_line("listening on")
        self.port = int(line.split("listening on ", 1)[1].split("/", 3)[2].rsplit(":", 1)[1])
        self.scheme = "https" if "https://" in line else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"


def get(url: str, headers: dict | None = None, context: ssl.SSLContext | None = None,
        timeout: float = 10) -> tuple[int, dict, str]:
    """(status, headers, body) of a GET, without raising on 4xx/5xx."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read().decode()


def metrics(url: str, **kw) -> str:
    status, _, body = get(url, **kw)
    assert status == 200, (status, body)
    return body


class Exposition:
    """A parsed text exposition: sample name -> {labels: value}, with each family's type and HELP."""

    def __init__(self, text: str):
        self.text = text
        self.samples: dict[str, dict[frozenset, float]] = {}
        self.types: dict[str, str] = {}
        self.help: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
                self.types[s.name] = family.type
                self.help[s.name] = family.documentation

    def names(self, prefix: str = "") -> set[str]:
        return {n for n in self.samples if n.startswith(prefix)}

    def value(self, name: str, **labels: str) -> float:
        return self.samples[name][frozenset(labels.items())]

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(key)[label] for key in self.samples.get(name, {})}


def scrape(url: str, **kw) -> Exposition:
    return Exposition(metrics(url, **kw))


def wait_scrape(url: str, predicate, timeout: float = 20.0, what: str = "scrape condition", **kw) -> Exposition:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = scrape(url, **kw)
        if predicate(last):
            return last
        time.sleep(0.05)
    # The what again at the end: CI shows a failing run's tail, which the scrape would otherwise fill.
    raise AssertionError(f"timed out waiting for {what}; last scrape:\n{last.text if last else None}\n"
                         f"(timed out after {timeout} s waiting for {what})")


def keepalive_connection(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)
