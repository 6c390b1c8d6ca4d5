"""Fetching listing images given as URLs: allow-listed hosts, public addresses, bounded in bytes and time.

One implementation, asynchronous, on httpx; two ways in:

- the HTTP service awaits :meth:`ImageUrlFetcher.fetch` (one URL) or
  :meth:`ImageUrlFetcher.fetch_many` (a listing's or a batch's URLs, at most
  ``max_concurrency`` at a time, one result or one error per URL, in order);
- ``signals/`` does no network I/O: its :class:`~signals.image_decode.ImageDecoder`
  takes a plain callable (``UrlFetcher``, ``(url, max_bytes) -> bytes``), and the
  fetcher is one: calling it runs :meth:`~ImageUrlFetcher.fetch` on a private event
  loop thread and waits. The batch job and ``marketguard extract`` plug it in::

      fetch = url_fetcher_for(config.signals.images.decode)
      registry = build_registry(config.signals, data_dir, fetch_url=fetch)

The rules (settings in ``images.decode``), checked on the URL and again on every
redirect hop:

- the scheme is ``https`` (``http`` too only with ``url_allow_http``);
- the host is on ``url_allow_hosts``, exactly (case-insensitive; no suffix or
  subdomain match); any port; no ``user:password@``; no spaces or control characters;
- the host's addresses are resolved once, and if any of them is not a public
  unicast address (private, loopback, link-local, multicast, reserved, unspecified,
  shared or documentation ranges, IPv4 and IPv6, IPv4 inside IPv6 judged as IPv4),
  the URL is refused unless the address lies in ``url_allow_networks``. An IP literal
  that is itself on ``url_allow_hosts`` is allowed as written: no DNS can change it;
- the connection goes to an address that was checked, never to a second lookup's
  answer (DNS rebinding), with the URL's host name in ``Host``, in TLS SNI and in
  certificate verification;
- at most ``url_max_redirects`` redirects (301, 302, 303, 307, 308), each one to a
  URL that passes the same rules; a URL seen twice is a loop;
- ``url_connect_timeout_s`` for each TCP connect (and TLS handshake), and one total
  deadline, ``url_timeout_s``, for everything: DNS, connecting, redirects, headers, body;
- a ``Content-Length`` over ``max_bytes`` is refused before the body is read; the
  body is streamed and reading stops past ``max_bytes`` bytes;
- only a 200 is an image; no cookies are kept, no proxies (``trust_env=False``: the
  ``*_proxy`` environment variables and ``.netrc`` are ignored),
  ``Accept-Encoding: identity`` and the raw bytes are read (nothing is decompressed,
  so a small compressed body cannot expand past the cap).

Every failure is an :class:`~signals.errors.InvalidInput` on the field ``url``, which
the decoder renames ``images[i].url``: ``invalid`` for a URL or redirect breaking a
rule (not on the allow-list, resolves to a private address), ``too_large``,
``not_found`` (HTTP 404/410), ``fetch_failed`` (another status, a timeout, a refused
connection, a TLS error, a name that does not resolve). Never a traceback.

How the address is pinned: httpx has no resolver hook, but the connection pool under
it (httpcore) takes a *network backend*, the object whose ``connect_tcp(host, port)``
opens every socket. :class:`_CheckedNetworkBackend` is that object: it refuses a host
off the allow-list (whatever a URL parser made of the URL), resolves the name once,
checks every address and connects to the checked address itself. httpcore still
speaks to the origin ``https://host:port``, so ``Host``, SNI and the certificate's
name check use the name, not the address. httpx 0.28 takes no backend argument
(httpx PR #3749 would add one), so :class:`_CheckedTransport` is a small public-API
transport around ``httpcore.AsyncConnectionPool(network_backend=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import socket
import ssl
import threading
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from signals.config import ImageDecodeConfig
from signals.errors import ErrorCode, InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the host's addresses as strings; the default asks the system's resolver.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
FETCH_FAILED: ErrorCode = "fetch_failed"
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_MAX_CONCURRENCY = 8
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f]")  # urlsplit would silently drop tabs and newlines
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
# Sync callers wait this much longer than the fetch's own deadline before giving up on it.
_SYNC_GRACE_S = 5.0

_T = TypeVar("_T")


def fetch_failed(reason: str) -> InvalidInput:
    """The error of a fetch that went wrong on the network or the far side (not the URL)."""
    return InvalidInput("url", reason, FETCH_FAILED)


# --------------------------------------------------------------------------- addresses
def address_refusal(address: IPAddress, allow_networks: Sequence[IPNetwork] = ()) -> str | None:
    """Why connecting to ``address`` is refused (``"loopback"``, ``"private"``, ...), or None.

    Public unicast addresses pass; so does any address inside ``allow_networks``. An
    IPv4 address carried in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``,
    6to4 ``2002::/16``) is judged as the IPv4 address it reaches.
    """
    if _allowed(address, allow_networks):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        carried = _carried_ipv4(address)
        if carried is not None:
            kind, v4 = carried
            if _allowed(v4, allow_networks):
                return None
            why = _non_public(v4)
            if why is not None:
                return f"{why} {v4} as {kind}"
            if kind != "6to4":  # the IPv6 wrapper of these is not routable itself; the IPv4 is
                return None
    return _non_public(address)


def _allowed(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address in net for net in networks)  # another IP version is simply not inside


def _carried_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if address.ipv4_mapped is not None:
        return "IPv4-mapped IPv6", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None  # Teredo (2001::/32) is refused as non-global in its own right


def _non_public(address: IPAddress) -> str | None:
    # Most specific first: 127.0.0.1 is also "private" and 0.0.0.0 also "reserved" to ipaddress.
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:  # ipaddress counts 224.0.0.0/4 as global
        return "multicast"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_reserved:  # 240.0.0.0/4, which ipaddress also calls private
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:  # 100.64.0.0/10 (shared, carrier NAT) and the like
        return "not globally routable"
    return None


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR blocks (``"10.20.0.0/16"``, ``"::1/128"``; a bare address is one host).

    ValueError quoting the value for anything else, or for host bits set
    (``10.0.0.1/8`` is more likely a typo than a wish for all of 10/8).
    """
    out: list[IPNetwork] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"url_allow_networks: {value!r} is not a network ({exc})") from None
    return tuple(out)


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's TCP addresses from the system's resolver (``getaddrinfo``), in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def normal_host(host: str) -> str:
    """A host as compared with the allow-list and as httpx puts it on the wire.

    Lower case, IPv6 without brackets, IP addresses in their canonical form, and
    international names in their IDNA (``xn--``) form. ValueError if it is none of these.
    """
    h = host.lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(h))
    if h.isascii():
        return h
    try:
        return httpx.URL(scheme="https", host=h).raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise ValueError(f"{host!r} is not a valid host name ({exc})") from None


# --------------------------------------------------------------------------- fetcher
@dataclass(frozen=True)
class _Target:
    """One checked URL: where to connect and what to ask for."""

    url: str  # without the fragment: the key for loop detection and relative redirects
    scheme: str
    host: str  # normal_host()
    port: int
    request_url: httpx.URL
    shown: str  # for messages: scheme://host[:port]/path, the query left out (it may hold tokens)


class ImageUrlFetcher:
    """Fetches image URLs under the allow-list, the address rules, the redirect rules and a deadline.

    ``await fetch(url)`` and ``await fetch_many(urls)`` for async callers; calling the
    object, ``fetcher(url, max_bytes) -> bytes``, is ``signals.image_decode.UrlFetcher``
    for sync ones. Stateless between calls (each call opens and closes its own
    connections), so one instance serves every thread and every event loop.

    Settings come from ``config`` (``ImageDecodeConfig``); the keyword arguments
    override the ones it may not have: ``allow_networks`` (CIDRs where non-public
    addresses are allowed, e.g. ``["127.0.0.0/8", "::1/128"]`` for a local server),
    ``connect_timeout_s``, ``max_concurrency`` (of ``fetch_many``). ``tls_context``
    replaces the system's trust store (a CDN behind a private CA; tests). ``resolver``
    replaces the system's DNS (tests).
    """

    def __init__(self, config: ImageDecodeConfig, *,
                 allow_networks: Sequence[str] | None = None,
                 connect_timeout_s: float | None = None,
                 max_concurrency: int | None = None,
                 tls_context: ssl.SSLContext | None = None,
                 resolver: Resolver | None = None) -> None:
        try:
            self.allow_hosts = frozenset(normal_host(h.strip()) for h in config.url_allow_hosts)
        except ValueError as exc:
            raise ValueError(f"url_allow_hosts: {exc}") from None
        self.allow_networks = parse_networks(
            allow_networks if allow_networks is not None
            else _optional_setting(config, "url_allow_networks", ()))
        self.schemes: tuple[str, ...] = ("https", "http") if config.url_allow_http else ("https",)
        self.timeout_s = config.url_timeout_s
        connect = (connect_timeout_s if connect_timeout_s is not None
                   else _optional_setting(config, "url_connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S))
        if not connect > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect!r}")
        self.connect_timeout_s = min(float(connect), self.timeout_s)
        concurrency = (max_concurrency if max_concurrency is not None
                       else _optional_setting(config, "url_max_concurrency", DEFAULT_MAX_CONCURRENCY))
        if not (isinstance(concurrency, int) and 1 <= concurrency <= 1024):
            raise ValueError(f"max_concurrency must be an int in 1..1024, got {concurrency!r}")
        self.max_concurrency = concurrency
        self.max_redirects = config.url_max_redirects
        self.max_bytes = config.max_image_bytes
        self.user_agent = config.url_user_agent
        # Certificates and host names verified (create_default_context's defaults).
        self._tls = tls_context if tls_context is not None else ssl.create_default_context()
        self._resolve: Resolver = resolver if resolver is not None else system_resolver

    # -- async API ------------------------------------------------------------------------
    async def fetch(self, url: str, max_bytes: int | None = None) -> bytes:
        """The image at ``url`` (at most ``max_bytes``, default ``max_image_bytes``).

        Raises :class:`InvalidInput` (field ``url``) for every way it can fail.
        """
        cap = self._cap(max_bytes)
        async with self._client() as client:
            return await self._fetch(client, url, cap)

    async def fetch_many(self, urls: Sequence[str],
                         max_bytes: int | None = None) -> list[bytes | InvalidInput]:
        """Every URL's image or its error, in ``urls``' order; one bad URL fails only itself.

        At most ``max_concurrency`` fetches run at once (each with its own deadline,
        started when it starts); a URL given twice is fetched once.
        """
        cap = self._cap(max_bytes)
        unique = list(dict.fromkeys(urls))
        results: dict[str, bytes | InvalidInput] = {}
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(client: httpx.AsyncClient, url: str) -> None:
            async with gate:
                try:
                    results[url] = await self._fetch(client, url, cap)
                except InvalidInput as exc:
                    results[url] = exc

        if unique:
            # A bug (anything but InvalidInput) cancels the rest and is raised, not swallowed.
            async with self._client() as client, asyncio.TaskGroup() as group:
                for url in unique:
                    group.create_task(one(client, url))
        return [results[url] for url in urls]

    # -- sync API (signals.image_decode.UrlFetcher) ----------------------------------------
    def __call__(self, url: str, max_bytes: int) -> bytes:
        """``fetch(url, max_bytes)`` for sync callers: run on a private event loop, waited for.

        Safe from any thread, and from sync code inside a running event loop (which
        it blocks for the duration, as any sync call does).
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")
        try:
            return _SYNC_LOOP.run(self.fetch(url, max_bytes), self.timeout_s + _SYNC_GRACE_S)
        except TimeoutError:  # only if the fetch's own deadline failed to end it
            raise fetch_failed(f"could not fetch the URL: timed out after {self.timeout_s:g} s") \
                from None

    # -- rules ----------------------------------------------------------------------------
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
        try:
            host = normal_host(parts.hostname or "")
        except ValueError as exc:
            raise InvalidInput("url", f"{how} is not valid: {exc}") from None
        if not host:
            raise InvalidInput("url", f"{how} has no host")
        if host not in self.allow_hosts:
            raise InvalidInput("url", f"{how} on host {host!r}, which is not on the image URL "
                                      "allow-list")
        port = port if port is not None else (443 if scheme == "https" else 80)
        clean = parts._replace(fragment="").geturl()
        # Two URL parsers must agree on where this goes: ours checked it, httpx sends it.
        try:
            request_url = httpx.URL(clean)
        except httpx.InvalidURL as exc:
            raise InvalidInput("url", f"{how} is not valid: {exc}") from None
        if (request_url.scheme != scheme or request_url.raw_host.decode("ascii") != host
                or (request_url.port or port) != port):
            raise InvalidInput("url", f"{how} is ambiguous (its host or port reads two ways)")
        path = parts.path or "/"
        return _Target(url=clean, scheme=scheme, host=host, port=port, request_url=request_url,
                       shown=f"{scheme}://{parts.netloc}{path}")

    async def checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``: resolved once, every one checked.

        InvalidInput when the host is off the allow-list or any address is refused
        (one bad answer refuses the host: a name mixing public and internal
        addresses is not one to trust); ``fetch_failed`` when it does not resolve.
        """
        host = normal_host(host)
        if host not in self.allow_hosts:  # whatever a parser made of the URL, never elsewhere
            raise InvalidInput("url", f"host {host!r} is not on the image URL allow-list")
        with contextlib.suppress(ValueError):
            # An address on the allow-list was allowed by name: no lookup can change it.
            return [str(ipaddress.ip_address(host))]
        try:
            answers = await self._resolve(host, port)
        except OSError as exc:
            raise fetch_failed(f"could not resolve {host!r}: {_reason(exc)}") from None
        if not answers:
            raise fetch_failed(f"could not resolve {host!r}: no address")
        checked: list[str] = []
        for answer in answers:
            try:
                address = ipaddress.ip_address(answer)
            except ValueError:
                raise fetch_failed(f"could not resolve {host!r}: {answer!r} is not an address") \
                    from None
            why = address_refusal(address, self.allow_networks)
            if why is not None:
                raise InvalidInput("url", f"host {host!r} resolves to a private address "
                                          f"({address}: {why}), outside url_allow_networks")
            checked.append(str(address))
        return checked

    # -- internals ------------------------------------------------------------------------
    def _cap(self, max_bytes: int | None) -> int:
        cap = self.max_bytes if max_bytes is None else max_bytes
        if cap < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")
        return cap

    def _client(self) -> httpx.AsyncClient:
        transport = _CheckedTransport(_CheckedNetworkBackend(self.checked_addresses),
                                      ssl_context=self._tls, max_connections=self.max_concurrency)
        return httpx.AsyncClient(
            transport=transport,
            trust_env=False,  # no *_proxy variables, no .netrc
            follow_redirects=False,  # followed here, each hop checked
            # Read and write wait at most the whole deadline; _fetch enforces the sum.
            timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
            headers={"User-Agent": self.user_agent, "Accept": "image/*",
                     "Accept-Encoding": "identity"},
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # keeps none
        )

    async def _fetch(self, client: httpx.AsyncClient, url: str, cap: int) -> bytes:
        target = self.check_url(url)
        try:
            async with asyncio.timeout(self.timeout_s):
                seen = {target.url}
                for _ in range(self.max_redirects + 1):
                    status, location, body = await self._get(client, target, cap)
                    if status == 200:
                        return body
                    if status in (404, 410):
                        raise InvalidInput("url", f"{target.shown} answered HTTP {status}",
                                           "not_found")
                    if status not in REDIRECT_STATUSES:
                        raise fetch_failed(f"{target.shown} answered HTTP {status}")
                    if not location:
                        raise fetch_failed(f"{target.shown} answered HTTP {status} without a "
                                           "Location")
                    target = self.check_url(urljoin(target.url, location.strip()), redirected=True)
                    if target.url in seen:
                        raise fetch_failed(f"redirect loop at {target.shown}")
                    seen.add(target.url)
                raise fetch_failed(f"more than {self.max_redirects} redirect(s)")
        except TimeoutError:
            raise self._timed_out(target) from None

    async def _get(self, client: httpx.AsyncClient, target: _Target,
                   cap: int) -> tuple[int, str | None, bytes]:
        """One GET: ``(status, Location, body)``; the body is read for a 200 only."""
        response: httpx.Response | None = None
        try:
            response = await client.send(client.build_request("GET", target.request_url),
                                         stream=True)
            if response.status_code != 200:
                return response.status_code, response.headers.get("location"), b""
            declared = _content_length(response)
            if declared is not None and declared > cap:
                raise InvalidInput("url", f"image too large: over {cap} bytes (Content-Length "
                                          f"{declared})", "too_large")
            return 200, None, await _read_capped(response, cap, declared, target)
        except httpx.ConnectTimeout:
            raise fetch_failed(f"could not fetch {target.shown}: timed out connecting (after "
                               f"{self.connect_timeout_s:g} s)") from None
        except httpx.TimeoutException:
            raise self._timed_out(target) from None
        except (httpx.HTTPError, OSError) as exc:
            raise fetch_failed(f"could not fetch {target.shown}: {_reason(exc)}") from None
        finally:
            if response is not None:
                await response.aclose()  # unread body: the connection is closed, not reused

    def _timed_out(self, target: _Target) -> InvalidInput:
        return fetch_failed(f"could not fetch {target.shown}: timed out after {self.timeout_s:g} s")


def _optional_setting(config: ImageDecodeConfig, name: str, default: Any) -> Any:
    """A setting ``ImageDecodeConfig`` may not define yet (then the default applies)."""
    value = getattr(config, name, None)
    return default if value is None else value


def _content_length(response: httpx.Response) -> int | None:
    raw = (response.headers.get("content-length") or "").strip()
    return int(raw) if raw.isdigit() else None  # absent or malformed: the streamed cap decides


async def _read_capped(response: httpx.Response, cap: int, declared: int | None,
                       target: _Target) -> bytes:
    """The raw body, streamed: reading stops at the first chunk past ``cap`` bytes."""
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in response.aiter_raw():  # raw: never decompressed
            total += len(chunk)
            if total > cap:
                raise InvalidInput("url", f"image too large: over {cap} bytes", "too_large")
            chunks.append(chunk)
    except httpx.RemoteProtocolError:
        if declared is not None and total < declared:
            raise fetch_failed(f"could not fetch {target.shown}: connection closed after "
                               f"{total} of {declared} bytes") from None
        raise
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    """A short reason from an exception and its causes (httpx wraps httpcore wraps OSError)."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate not accepted ({e.verify_message})"
    for e in chain:
        if isinstance(e, OSError) and not isinstance(e, ssl.SSLError):
            # errno first: asyncio says "Connect call failed ('10.0.0.1', 443)" for ECONNREFUSED.
            text = (os.strerror(e.errno) if e.errno and e.errno > 0
                    and not isinstance(e, socket.gaierror) else e.strerror)
            if text:
                return text[:1].lower() + text[1:]
    for e in chain:
        if str(e):
            return str(e)
    return type(exc).__name__


# --------------------------------------------------------------------------- transport
class _CheckedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's socket factory, connecting only to checked addresses of allowed hosts."""

    def __init__(self, checked_addresses: Callable[[str, int], Awaitable[list[str]]]) -> None:
        self._checked_addresses = checked_addresses
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        # InvalidInput goes straight through httpcore and httpx to the fetcher.
        error: httpcore.ConnectError | None = None
        for address in await self._checked_addresses(host, port):
            try:
                # An address, not a name: anyio's getaddrinfo parses it, asks no DNS.
                return await self._inner.connect_tcp(address, port, timeout=timeout,
                                                     local_address=local_address,
                                                     socket_options=socket_options)
            except httpcore.ConnectError as exc:  # refused, unreachable: the next address
                error = exc
        raise error if error is not None else httpcore.ConnectError(f"no address for {host}")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used by the image fetcher")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's exceptions as httpx's, most specific first (what httpx's own transport does).
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _HTTPX_ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class _CheckedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an HTTP/1.1 httpcore pool with a given network backend."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, *, ssl_context: ssl.SSLContext,
                 max_connections: int) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_connections=max_connections, http1=True, http2=False,
            retries=0, network_backend=backend)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("the image fetcher sends async requests only")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        if not isinstance(response.stream, AsyncIterable):
            raise TypeError("httpcore returned a sync stream to an async pool")
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()


# --------------------------------------------------------------------------- sync bridge
class _LoopThread:
    """One event loop on a daemon thread, shared by every sync caller in the process.

    Started on first use, and again in a forked child (a thread does not survive a
    fork). Nothing lives on it between calls: each fetch opens and closes its client.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float) -> _T:
        """Run ``coro`` on the loop and wait at most ``timeout_s`` (TimeoutError past it)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._running_loop())
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="image-url-fetch",
                                 daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_SYNC_LOOP = _LoopThread()


def url_fetcher_for(config: ImageDecodeConfig) -> ImageUrlFetcher | None:
    """The fetcher for this config, or None when no host is allow-listed (URLs refused)."""
    return ImageUrlFetcher(config) if config.url_allow_hosts else None
