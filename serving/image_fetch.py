"""Fetching listing images given as URLs: allow-listed hosts only, bounded in bytes and time.

``signals/`` does no network I/O: its :class:`~signals.image_decode.ImageDecoder`
takes a fetcher as a plain callable (``UrlFetcher``, ``(url, max_bytes) -> bytes``)
and serving plugs this one in::

    fetch = url_fetcher_for(config.signals.images.decode)
    registry = build_registry(config.signals, data_dir, fetch_url=fetch)

The rules (settings in ``images.decode``), checked on the URL and again on every
redirect hop:

- the scheme is ``https`` (``http`` too only with ``url_allow_http``);
- the host is on ``url_allow_hosts``, exactly (case-insensitive; no suffix or
  subdomain match); any port; no ``user:password@``; no spaces or control characters;
- at most ``url_max_redirects`` redirects (301, 302, 303, 307, 308), each one to a
  URL that passes the same rules; a URL seen twice is a loop;
- one total deadline, ``url_timeout_s``, for connecting, redirects, headers and body;
- a ``Content-Length`` over ``max_bytes`` is refused before the body is read; the
  body is streamed and reading stops at ``max_bytes + 1`` bytes;
- only a 200 is an image; no cookies, no proxies (``*_proxy`` environment variables
  are ignored), ``Accept-Encoding: identity`` (nothing to decompress, so a small
  compressed body cannot expand past the cap).

Every failure is an :class:`~signals.errors.InvalidInput` on the field ``url``, which
the decoder renames ``images[i].url``: ``invalid`` for a URL or redirect breaking a
rule, ``too_large``, ``not_found`` (HTTP 404/410), ``fetch_failed`` (another status,
a timeout, a refused connection, a TLS error). Never a traceback.

Why ``http.client`` and not ``urllib.request``: urllib's timeout applies to each
socket operation, not to the fetch, so a server sending one byte a second (or one
header line a second) would hold a worker for as long as it likes. Here the socket
is ours: a watchdog shuts it down when the deadline passes, whatever http.client is
blocked on. And http.client has no proxy, cookie or redirect machinery to turn off:
it talks to the host it is given and nothing else.

Not covered by the deadline: the DNS lookup (``getaddrinfo`` has no timeout; the
system resolver's own applies). Allow-listed hosts are trusted to resolve to the
right place: there is no check of the addresses they resolve to.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from signals.config import ImageDecodeConfig
from signals.errors import InvalidInput

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f]")  # urlsplit would silently drop tabs and newlines
FETCH_FAILED = "fetch_failed"


def fetch_failed(reason: str) -> InvalidInput:
    """The error of a fetch that went wrong on the network or the far side (not the URL)."""
    # "fetch_failed" is not (yet) one of signals.errors.ErrorCode's values; InvalidInput
    # stores any string and ItemError.code accepts one.
    return InvalidInput("url", reason, FETCH_FAILED)


@dataclass(frozen=True)
class _Target:
    """One checked URL: where to connect and what to ask for."""

    url: str  # without the fragment: the key for loop detection and relative redirects
    scheme: str
    host: str
    port: int
    request_path: str  # path and query
    shown: str  # for messages: scheme://host[:port]/path, the query left out (it may hold tokens)


class ImageUrlFetcher:
    """Fetches one image URL under the allow-list, the redirect rules and a total deadline.

    Callable as ``fetcher(url, max_bytes) -> bytes`` (``signals.image_decode.UrlFetcher``).
    Stateless between calls, so one instance serves every thread. ``tls_context``
    replaces the system's trust store (a CDN behind a private CA; tests).
    """

    def __init__(self, config: ImageDecodeConfig, *,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.allow_hosts = frozenset(h.lower() for h in config.url_allow_hosts)
        self.schemes: tuple[str, ...] = ("https", "http") if config.url_allow_http else ("https",)
        self.timeout_s = config.url_timeout_s
        self.max_redirects = config.url_max_redirects
        self.user_agent = config.url_user_agent
        # Certificates and host names verified (create_default_context's defaults).
        self._tls = tls_context if tls_context is not None else ssl.create_default_context()

    def __call__(self, url: str, max_bytes: int) -> bytes:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")
        target = self.check_url(url)
        deadline = _Deadline(self.timeout_s)
        try:
            seen = {target.url}
            for _ in range(self.max_redirects + 1):
                status, location, body = self._get(target, max_bytes, deadline)
                if status == 200:
                    return body
                if status in (404, 410):
                    raise InvalidInput("url", f"{target.shown} answered HTTP {status}", "not_found")
                if status not in REDIRECT_STATUSES:
                    raise fetch_failed(f"{target.shown} answered HTTP {status}")
                if not location:
                    raise fetch_failed(f"{target.shown} answered HTTP {status} without a Location")
                target = self.check_url(urljoin(target.url, location.strip()), redirected=True)
                if target.url in seen:
                    raise fetch_failed(f"redirect loop at {target.shown}")
                seen.add(target.url)
            raise fetch_failed(f"more than {self.max_redirects} redirect(s)")
        finally:
            deadline.finish()

    def check_url(self, url: str, *, redirected: bool = False) -> _Target:
        """The URL checked against every rule, ready to request; InvalidInput if it breaks one."""
        how = "redirected to a URL" if redirected else "URL"
        if _UNSAFE_CHARS.search(url):
            raise InvalidInput("url", f"{how} contains spaces or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise InvalidInput("url", f"{how} is not valid: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            allowed = " or ".join(self.schemes)
            raise InvalidInput("url", f"{how} with scheme {scheme!r}: only {allowed} is fetched")
        if "@" in parts.netloc:
            raise InvalidInput("url", f"{how} with a user name or password is not accepted")
        host = (parts.hostname or "").lower()
        if not host:
            raise InvalidInput("url", f"{how} has no host")
        if host not in self.allow_hosts:
            raise InvalidInput("url", f"{how} on host {host!r}, which is not on the image URL "
                                      "allow-list")
        path = parts.path or "/"
        request_path = f"{path}?{parts.query}" if parts.query else path
        return _Target(
            url=parts._replace(fragment="").geturl(), scheme=scheme, host=host,
            port=port if port is not None else (443 if scheme == "https" else 80),
            request_path=request_path, shown=f"{scheme}://{parts.netloc}{path}")

    def _get(self, target: _Target, max_bytes: int,
             deadline: _Deadline) -> tuple[int, str | None, bytes]:
        """One GET: ``(status, Location, body)``; the body is read for a 200 only."""
        conn: http.client.HTTPConnection | None = None
        sock: socket.socket | None = None
        try:
            sock = _connect(target.host, target.port, deadline)
            deadline.watch(sock)
            if target.scheme == "https":
                sock = self._tls.wrap_socket(sock, server_hostname=target.host)
                deadline.watch(sock)
                conn = http.client.HTTPSConnection(target.host, target.port, context=self._tls)
            else:
                conn = http.client.HTTPConnection(target.host, target.port)
            conn.sock = sock  # connected by us, under the deadline; http.client only talks
            conn.putrequest("GET", target.request_path, skip_accept_encoding=True)
            conn.putheader("User-Agent", self.user_agent)
            conn.putheader("Accept", "image/*")
            conn.putheader("Accept-Encoding", "identity")
            conn.putheader("Connection", "close")
            conn.endheaders()
            resp = conn.getresponse()
            if resp.status != 200:
                deadline.check(target)
                return resp.status, resp.getheader("Location"), b""
            declared = _content_length(resp)
            if declared is not None and declared > max_bytes:
                raise InvalidInput("url", f"image is over {max_bytes} bytes (Content-Length "
                                          f"{declared})", "too_large")
            body = _read_capped(resp, max_bytes, target, deadline)
            if declared is not None and len(body) < declared:
                raise fetch_failed(f"could not fetch {target.shown}: connection closed after "
                                   f"{len(body)} of {declared} bytes")
            return 200, None, body
        except InvalidInput:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            deadline.check(target)  # a socket shut by the watchdog fails in many ways
            if isinstance(exc, TimeoutError):
                raise deadline.timed_out(target) from None
            raise fetch_failed(f"could not fetch {target.shown}: {_reason(exc)}") from None
        finally:
            deadline.unwatch()  # before the socket closes: the watchdog must never shut down
            if conn is not None:  # a file descriptor reused by someone else
                conn.close()
            elif sock is not None:
                sock.close()


class _Deadline:
    """The total deadline of one fetch, and a watchdog that enforces it on the socket.

    Socket timeouts bound each operation; the watchdog bounds their sum: when the
    deadline passes it shuts the socket down, which wakes whatever read is blocked
    (a body or header line trickling in). Callers then see ``fired`` and report a timeout.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.fired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._finished = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        """Seconds left; TimeoutError when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left

    def watch(self, sock: socket.socket) -> None:
        sock.settimeout(self.left())
        with self._lock:
            self._sock = sock

    def unwatch(self) -> None:
        with self._lock:
            self._sock = None

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            self._sock = None
        self._timer.cancel()

    def check(self, target: _Target) -> None:
        if self.fired or time.monotonic() >= self.at:
            raise self.timed_out(target)

    def timed_out(self, target: _Target) -> InvalidInput:
        return fetch_failed(f"could not fetch {target.shown}: timed out after {self.seconds:g} s")

    def _fire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.fired = True
            if self._sock is not None:
                # The plain socket's shutdown, even on a TLS socket: SSLSocket.shutdown
                # would drop its TLS state under the thread reading from it.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)


def _connect(host: str, port: int, deadline: _Deadline) -> socket.socket:
    """A TCP connection to the first address that answers, every attempt within the deadline."""
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
            if isinstance(exc, TimeoutError):
                break
    raise error if error is not None else OSError(f"no address for {host}")


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    raw = (resp.getheader("Content-Length") or "").strip()
    return int(raw) if raw.isdigit() else None  # absent or malformed: the streamed cap decides


def _read_capped(resp: http.client.HTTPResponse, max_bytes: int, target: _Target,
                 deadline: _Deadline) -> bytes:
    """The body, streamed: never more than ``max_bytes + 1`` bytes are read."""
    chunks: list[bytes] = []
    total = 0
    while True:
        # read1: at most one socket read per call, so the deadline is looked at between them.
        chunk = resp.read1(min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise InvalidInput("url", f"image is over {max_bytes} bytes", "too_large")
        chunks.append(chunk)
        deadline.check(target)
    deadline.check(target)  # an EOF may be the watchdog's doing
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({exc.verify_message})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror[:1].isupper() else exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def url_fetcher_for(config: ImageDecodeConfig) -> ImageUrlFetcher | None:
    """The fetcher for this config, or None when no host is allow-listed (URLs refused)."""
    return ImageUrlFetcher(config) if config.url_allow_hosts else None
