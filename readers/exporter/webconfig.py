"""``--web.config.file``: the exporter-toolkit web configuration node_exporter reads.

The same YAML file can serve node_exporter and shm-exporter::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12             # TLS10..TLS13; default TLS12
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      prometheus: $2b$12$...         # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

As in exporter-toolkit, unknown keys are errors, the file is re-read when it
(or a certificate or key it names) changes, so certificates rotate and users
change without a restart, and successful and failed bcrypt checks are cached
so a scrape does not pay for bcrypt every time.  Whether TLS is on is decided
at start.  Go-specific tuning the Python TLS stack cannot apply
(``cipher_suites``, ``curve_preferences``, ``prefer_server_cipher_suites``,
``http2``) is accepted and ignored with a warning; ``client_allowed_sans`` and
``RequireAnyClientCert`` (a client certificate that is required but not
verified) are refused, since silently ignoring them would weaken access control.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import ssl
import threading
from collections import OrderedDict
from typing import NamedTuple

log = logging.getLogger("shm-exporter")

_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
             "cipher_suites", "curve_preferences", "prefer_server_cipher_suites", "client_allowed_sans"}
_TLS_IGNORED = ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites")
_HTTP_KEYS = {"http2", "headers"}
_TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                 "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# exporter-toolkit's client_auth_type -> what Python's ssl can do with the same effect.
# RequestClientCert asks for a certificate and never verifies it: no certificate is ever
# needed to get in, which is CERT_NONE's effect.
_CLIENT_AUTH = {"": ssl.CERT_NONE, "NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_NONE,
                "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL, "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# Response headers an operator may set, and their allowed values (None: any), as in exporter-toolkit.
EXTRA_HEADERS = {"Strict-Transport-Security": None, "X-Content-Type-Options": ("nosniff",),
                 "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": None,
                 "Content-Security-Policy": None}
_BCRYPT_RE = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")


class WebConfigError(Exception):
    """The web config file is unreadable or invalid (one line)."""


class TLSSettings(NamedTuple):
    cert_file: str
    key_file: str
    client_auth: ssl.VerifyMode
    client_ca_file: str | None
    min_version: ssl.TLSVersion
    max_version: ssl.TLSVersion


class WebConfig(NamedTuple):
    path: str | None
    tls: TLSSettings | None
    users: dict[str, str]  # user -> bcrypt hash
    headers: dict[str, str]

    def files(self) -> tuple[str, ...]:
        """The files this configuration depends on (a change to any means reload)."""
        out = [self.path] if self.path else []
        if self.tls:
            out += [self.tls.cert_file, self.tls.key_file]
            if self.tls.client_ca_file:
                out.append(self.tls.client_ca_file)
        return tuple(out)

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for these settings; raises WebConfigError if the files do not load."""
        tls = self.tls
        assert tls is not None
        for field, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file),
                            ("client_ca_file", tls.client_ca_file)):
            if path:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    raise WebConfigError(f"tls_server_config.{field} {path}: {exc.strerror}") from None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.minimum_version = tls.min_version
            ctx.maximum_version = tls.max_version
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
            if tls.client_ca_file:
                ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise WebConfigError(f"TLS: {_reason(exc)}") from None
        ctx.verify_mode = tls.client_auth
        ctx.set_alpn_protocols(["http/1.1"])  # no HTTP/2 here: a client must not try it
        return ctx


EMPTY = WebConfig(None, None, {}, {})


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    filename = getattr(exc, "filename", None)
    return f"{filename}: {text}" if filename else text


def _mapping(value: object, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise WebConfigError(f"{where}: unknown field {unknown[0]!r} (expected one of {', '.join(sorted(allowed))})")


def _string(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebConfigError(f"{where}.{key}: expected a string")
    return value


def parse(text: str, path: str | None = None) -> WebConfig:
    """Parse and validate the YAML text of a web config; raises WebConfigError."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise WebConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    data = _mapping(data, "web config")
    _check_keys(data, _TOP_KEYS, "web config")
    base = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    tls = _parse_tls(_mapping(data.get("tls_server_config"), "tls_server_config"), base)
    headers = _parse_http(_mapping(data.get("http_server_config"), "http_server_config"))
    users = {}
    for user, hashed in _mapping(data.get("basic_auth_users"), "basic_auth_users").items():
        if not isinstance(user, str) or not isinstance(hashed, str):
            raise WebConfigError("basic_auth_users: user names and hashes must be strings")
        match = _BCRYPT_RE.fullmatch(hashed)
        if not match or not 4 <= int(match[1]) <= 31:
            raise WebConfigError(f"basic_auth_users: the password hash of user {user!r} is not a bcrypt hash")
        users[user] = hashed
    return WebConfig(path, tls, users, headers)


def _parse_tls(tls: dict, base: str) -> TLSSettings | None:
    where = "tls_server_config"
    _check_keys(tls, _TLS_KEYS, where)
    if not tls:
        return None
    for key in _TLS_IGNORED:
        if tls.get(key) is not None:
            log.warning("%s.%s is not supported by shm-exporter and is ignored (Python's TLS defaults apply)",
                        where, key)
    if tls.get("client_allowed_sans"):
        raise WebConfigError(f"{where}.client_allowed_sans is not supported by shm-exporter")
    cert, key = _string(tls, "cert_file", where), _string(tls, "key_file", where)
    if not cert:
        raise WebConfigError(f"{where}: missing cert_file")
    if not key:
        raise WebConfigError(f"{where}: missing key_file")
    auth_name = _string(tls, "client_auth_type", where)
    if auth_name in ("RequireAnyClientCert", "RequireClientCert"):
        raise WebConfigError(f"{where}.client_auth_type {auth_name} (a certificate required but not verified) is "
                             "not supported by shm-exporter: use RequireAndVerifyClientCert with client_ca_file")
    if auth_name not in _CLIENT_AUTH:
        raise WebConfigError(f"{where}: invalid client_auth_type {auth_name!r}")
    ca = _string(tls, "client_ca_file", where)
    auth = _CLIENT_AUTH[auth_name]
    if ca and auth == ssl.CERT_NONE:
        raise WebConfigError(f"{where}: client_ca_file is set without a client_auth_type that verifies")
    if auth != ssl.CERT_NONE and not ca:
        raise WebConfigError(f"{where}: client_auth_type {auth_name} needs client_ca_file")
    versions = []
    for field, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = _string(tls, field, where) or default
        if name not in _TLS_VERSIONS:
            raise WebConfigError(f"{where}.{field}: unknown TLS version {name!r} (TLS10, TLS11, TLS12 or TLS13)")
        versions.append(_TLS_VERSIONS[name])
    if versions[0] > versions[1]:
        raise WebConfigError(f"{where}: min_version is above max_version")
    return TLSSettings(os.path.join(base, cert), os.path.join(base, key), auth,
                       os.path.join(base, ca) if ca else None, *versions)


def _parse_http(http: dict) -> dict[str, str]:
    _check_keys(http, _HTTP_KEYS, "http_server_config")
    if http.get("http2") is not None and not isinstance(http["http2"], bool):
        raise WebConfigError("http_server_config.http2: expected true or false")
    headers = _mapping(http.get("headers"), "http_server_config.headers")
    for name, value in headers.items():
        if name not in EXTRA_HEADERS:
            raise WebConfigError(f"http_server_config.headers: HTTP header {name!r} can not be configured")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise WebConfigError(f"http_server_config.headers: invalid value for {name}")
        allowed = EXTRA_HEADERS[name]
        if allowed and value not in allowed:
            raise WebConfigError(f"http_server_config.headers: invalid value for {name}: expected one of "
                                 f"{', '.join(allowed)}, got {value!r}")
    return dict(headers)


def load(path: str) -> WebConfig:
    """Read, parse and validate ``path``, loading the TLS files once to check them."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(_reason(exc)) from None
    config = parse(text, path)
    if config.tls:
        config.ssl_context()
    return config


def _signature(paths: tuple[str, ...]) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((p, None))
    return tuple(out)


class WebConfigWatcher:
    """The current web config, re-read when its file or a file it names changes.

    ``current()`` costs a few ``stat`` calls.  A change that makes the file
    invalid is logged once and fails closed: requests get 500, TLS handshakes
    fail (as exporter-toolkit does), until the file is fixed.
    """

    def __init__(self, path: str | None):
        self.path = path
        self._lock = threading.Lock()
        self.config = load(path) if path else EMPTY  # raises WebConfigError: the CLI exits 2
        self.tls_enabled = self.config.tls is not None
        self._context = self.config.ssl_context() if self.tls_enabled else None
        self._signature = _signature(self.config.files())
        self.error: str | None = None
        self.auth = Authenticator(self.config.users)

    def current(self) -> WebConfig | None:
        """The valid config in force, or None while the file on disk is invalid."""
        if self.path is None:
            return self.config
        paths = self.config.files()
        signature = _signature(paths)
        with self._lock:
            if signature == self._signature:
                return None if self.error else self.config
            try:
                config = load(self.path)
                if (config.tls is not None) != self.tls_enabled:
                    raise WebConfigError("turning TLS on or off needs a restart of shm-exporter")
                context = config.ssl_context() if config.tls else None
            except WebConfigError as exc:
                if self.error != str(exc):
                    log.error("web config %s: %s (refusing requests until it is fixed)", self.path, exc)
                self.error = str(exc)
                self._signature = signature
                return None
            if self.error:
                log.info("web config %s is valid again", self.path)
            else:
                log.info("web config %s reloaded", self.path)
            self.config, self._context, self.error = config, context, None
            self._signature = _signature(config.files())
            if config.users != self.auth.users:
                self.auth = Authenticator(config.users)
            return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for a new connection (None while the config is invalid)."""
        if self.current() is None:
            return None
        return self._context


class Authenticator:
    """HTTP basic auth against bcrypt hashes, with a small cache of checked credentials."""

    CACHE_SIZE = 128

    def __init__(self, users: dict[str, str]):
        self.users = dict(users)
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()  # bcrypt is CPU-bound: one at a time, as exporter-toolkit does
        self._decoy: bytes | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def check(self, authorization: str | None) -> bool:
        """True when the Authorization header carries a valid user and password."""
        if not self.users:
            return True
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), password, (hashed or "").encode()))).digest()
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        ok = self._bcrypt(password, hashed.encode() if hashed else self._decoy_hash()) and hashed is not None
        with self._cache_lock:
            self._cache[key] = ok
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return ok

    def _decoy_hash(self) -> bytes:
        """A hash of a random password at the users' highest cost: an unknown user is checked
        against it, so the answer takes as long as for a known user with a wrong password."""
        import bcrypt

        if self._decoy is None:
            cost = max(int(_BCRYPT_RE.fullmatch(h)[1]) for h in self.users.values())
            self._decoy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(cost))
        return self._decoy

    def _bcrypt(self, password: bytes, hashed: bytes) -> bool:
        import bcrypt

        with self._bcrypt_lock:
            try:
                return bcrypt.checkpw(password, hashed)
            except ValueError:  # e.g. a password longer than bcrypt's 72 bytes: no match
                return False


def _basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
