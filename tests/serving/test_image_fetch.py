"""The image URL fetcher against a local HTTP server: every rule, and the decoder end to end.

One ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) serves an image and every way
a URL can go wrong: too big, lying about its length, 404, redirects (allowed, to
another host, to another scheme, in a loop, too many), slow or trickling answers.
Only ``127.0.0.1`` is allow-listed, so ``localhost`` (the same server) is "another host".
``127.0.0.1`` written on the allow-list is allowed as the address it is; a *name* that
resolves to a loopback address needs its network allowed (``allow_networks``). Names
like ``images.test`` exist in no DNS: a fake resolver answers for them, so a fetch
that reaches the server proves the fetcher connected to the address it checked.
Nothing leaves 127.0.0.1; every server stops with its module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import io
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydantic
import pytest
from PIL import Image

from serving.image_fetch import (
    ImageUrlFetcher,
    Resolver,
    address_refusal,
    parse_networks,
    url_fetcher_for,
)
from signals.config import ImageDecodeConfig, SignalsConfig
from signals.errors import InvalidInput
from signals.registry import build_image_extractors, build_registry
from signals.schemas import Listing, parse_record

TIMEOUT_S = 0.5  # the slow endpoints take well past it
SLOW_S = 1.5
WAIT_S = 0.2  # /wait: long enough to see fetches overlap
LOOPBACK = ["127.0.0.0/8", "::1/128"]


def _png() -> bytes:
    im = Image.effect_mandelbrot((160, 120), (-2.0, -1.2, 1.0, 1.2), 64).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # slow handlers must not hold up the shutdown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers) as received
        self.http_port = 0  # of the plain-http server, for the https one's redirect to it
        self.sni: list[str | None] = []  # TLS server names asked for (the https server)
        self.lock = threading.Lock()
        self.in_flight = 0  # /wait requests being answered now, and the most at once
        self.peak = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused TLS handshakes and hung-up clients are what these tests provoke


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers)))
        path = urlsplit(self.path).path
        route = ROUTES.get(path)
        if route is None and path.startswith("/hop/"):
            route = _hop
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            (route or _not_found)(self)  # the fetcher may hang up early, as it should

    # helpers
    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def body(self, data: bytes, length: int | None = None, ctype: str = "image/png") -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)

    def redirect(self, location: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _not_found(h: _Handler) -> None:
    h.send_error(404)


def _huge(h: _Handler) -> None:
    h.send_response(200)  # no Content-Length: the body ends when the connection does
    h.send_header("Content-Type", "image/png")
    h.end_headers()
    for _ in range(256):  # 16 MiB, if anyone kept reading
        h.wfile.write(b"\0" * 65536)


def _hop(h: _Handler) -> None:
    n = int(h.path.rsplit("/", 1)[1])
    h.redirect(f"/hop/{n - 1}" if n > 1 else "/img.png")


def _slow(h: _Handler) -> None:
    time.sleep(SLOW_S)
    h.body(PNG)


def _drip_body(h: _Handler) -> None:
    h.send_response(200)  # every byte arrives well within the timeout; the whole never does
    h.end_headers()
    for _ in range(int(SLOW_S / 0.05)):
        h.wfile.write(b"x")
        time.sleep(0.05)


def _drip_headers(h: _Handler) -> None:
    # One header line, a byte at a time: http.client reads it with one readline, which no
    # per-read socket timeout interrupts. Only the fetch's own deadline does.
    h.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
    for _ in range(int(SLOW_S / 0.05)):
        h.wfile.write(b"a")
        time.sleep(0.05)


def _wait(h: _Handler) -> None:
    server = h.server
    with server.lock:
        server.in_flight += 1
        server.peak = max(server.peak, server.in_flight)
    try:
        time.sleep(WAIT_S)
    finally:
        with server.lock:
            server.in_flight -= 1
    h.body(PNG)


def _gzip(h: _Handler) -> None:
    data = gzip.compress(b"\0" * 1_000_000)  # 1 MB of zeros in about 1 KB
    h.send_response(200)
    h.send_header("Content-Type", "image/png")
    h.send_header("Content-Encoding", "gzip")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


ROUTES: dict[str, Callable[[_Handler], None]] = {
    "/img.png": lambda h: h.body(PNG),
    "/huge": _huge,
    "/declared-huge": lambda h: h.body(b"x" * 100, length=10**9),
    "/short": lambda h: h.body(b"x" * 10, length=1000),
    "/error": lambda h: h.send_error(500),
    "/redirect": lambda h: h.redirect("/img.png"),
    "/redirect-absolute": lambda h: h.redirect(f"http://127.0.0.1:{h.port}/img.png"),
    "/redirect-away": lambda h: h.redirect(f"http://localhost:{h.port}/img.png"),
    "/redirect-ftp": lambda h: h.redirect("ftp://127.0.0.1/img.png"),
    "/redirect-file": lambda h: h.redirect("file:///etc/passwd"),
    "/redirect-userinfo": lambda h: h.redirect(f"http://user:pw@127.0.0.1:{h.port}/img.png"),
    "/redirect-http": lambda h: h.redirect(f"http://127.0.0.1:{h.server.http_port}/img.png"),
    "/loop": lambda h: h.redirect("/loop#again"),
    "/set-cookie": lambda h: h.redirect("/headers", {"Set-Cookie": "session=s3cr3t; Path=/"}),
    "/headers": lambda h: h.body(json.dumps(dict(h.headers)).encode(), ctype="application/json"),
    "/slow": _slow,
    "/drip-body": _drip_body,
    "/drip-headers": _drip_headers,
    "/wait": _wait,
    "/gzip": _gzip,
}


@dataclass
class Site:
    server: _Server
    scheme: str = "http"
    cafile: Path | None = None  # the https site's self-signed certificate

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def paths_seen(self) -> list[str]:
        return [p for p, _ in self.server.requests]


def _serve(server: _Server) -> Iterator[_Server]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    for server in _serve(_Server()):
        yield Site(server)


def _self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and images.test, and its key, as PEM files (needs ``cryptography``)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MarketGuard test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("images.test")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_site(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The same routes over https, with a self-signed certificate for 127.0.0.1."""
    cert, key = _self_signed_cert(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = _Server()
    server.http_port = site.port
    context.sni_callback = lambda _sock, name, _ctx: server.sni.append(name)
    # The handshake happens in the handler's thread, not in the accepting one.
    server.socket = context.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    for s in _serve(server):
        yield Site(s, scheme="https", cafile=cert)


def trusting(tls_site: Site, **settings: Any) -> ImageUrlFetcher:
    """An https-only fetcher that trusts the test certificate (and nothing else)."""
    config = ImageDecodeConfig(**{"url_allow_hosts": ["127.0.0.1"], "url_timeout_s": TIMEOUT_S,
                                  **settings})
    return ImageUrlFetcher(config, tls_context=ssl.create_default_context(cafile=tls_site.cafile))


def fetcher(*, allow_networks: Sequence[str] | None = None, max_concurrency: int | None = None,
            resolver: Resolver | None = None, **settings: Any) -> ImageUrlFetcher:
    """A fetcher of ``http`` and ``https`` on 127.0.0.1 (``settings``: ``ImageDecodeConfig``'s)."""
    base: dict[str, Any] = {"url_allow_hosts": ["127.0.0.1"], "url_allow_http": True,
                            "url_timeout_s": TIMEOUT_S}
    return ImageUrlFetcher(ImageDecodeConfig(**{**base, **settings}), allow_networks=allow_networks,
                           max_concurrency=max_concurrency, resolver=resolver)


def answering(table: dict[str, list[str]], calls: list[str] | None = None) -> Resolver:
    """A resolver answering from ``table`` (a list per name, one per call, the last one repeated)."""
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        answers = table.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [answers.pop(0) if len(answers) > 1 else answers[0]]
    return resolve


def refused(fetch: ImageUrlFetcher, url: str, max_bytes: int = 1 << 20) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        fetch(url, max_bytes)
    assert info.value.field == "url"
    return info.value


# --- what is fetched, and how ------------------------------------------------------------------

def test_fetches_an_allow_listed_image_on_any_port(site: Site) -> None:
    assert fetcher()(site.url("/img.png"), 1 << 20) == PNG
    assert fetcher().check_url("https://127.0.0.1:8443/a.png?size=2#x").port == 8443


def test_host_match_is_exact_and_case_insensitive(site: Site) -> None:
    fetch = fetcher(url_allow_hosts=["LocalHost"], allow_networks=LOOPBACK)
    assert fetch(site.url("/img.png", host="LOCALHOST"), 1 << 20) == PNG
    before = len(site.server.requests)
    for host in ("127.0.0.1", "localhost.evil.example", "evil.localhost"):
        err = refused(fetch, site.url("/img.png", host=host))
        assert err.code == "invalid" and "allow-list" in err.reason
    assert len(site.server.requests) == before  # refused without a request


def test_sends_identity_encoding_and_its_user_agent_and_keeps_no_cookies(site: Site) -> None:
    body = fetcher(url_user_agent="MG-test/1")(site.url("/set-cookie"), 1 << 20)
    headers = {k.lower(): v for k, v in json.loads(body).items()}
    assert headers["accept-encoding"] == "identity"
    assert headers["user-agent"] == "MG-test/1"
    assert "cookie" not in headers  # the redirect set one; it is not sent back


def test_proxy_environment_variables_are_ignored(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert fetcher()(site.url("/img.png"), 1 << 20) == PNG


# --- URL rules -----------------------------------------------------------------------------------

def test_https_only_unless_http_is_allowed(site: Site) -> None:
    before = len(site.server.requests)
    err = refused(fetcher(url_allow_http=False), site.url("/img.png"))
    assert err.code == "invalid" and "only https" in err.reason
    assert len(site.server.requests) == before


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/img.png", "file:///etc/passwd",
                                 "gopher://127.0.0.1:70/x", "//127.0.0.1/img.png"])
def test_other_schemes_are_refused(url: str) -> None:
    assert "scheme" in refused(fetcher(), url).reason


@pytest.mark.parametrize("netloc", ["user@127.0.0.1", "user:pw@127.0.0.1", ":pw@127.0.0.1",
                                    "127.0.0.1\\@evil.example", "evil.example@127.0.0.1"])
def test_user_info_is_refused(site: Site, netloc: str) -> None:
    err = refused(fetcher(), f"http://{netloc}:{site.port}/img.png")
    assert err.code == "invalid"
    assert "user name or password" in err.reason or "allow-list" in err.reason


@pytest.mark.parametrize("url", ["http://127.0.0.1/a.png\r\nX-Injected: 1", "http://127.0.0.1/a b",
                                 "http://127.0.0.1/a\tb.png", "http://127.0.0.1:99999/a.png",
                                 "http:///a.png"])
def test_malformed_urls_are_refused(url: str) -> None:
    assert refused(fetcher(), url).code == "invalid"


# --- size limits ---------------------------------------------------------------------------------

def test_a_streamed_body_stops_past_the_cap(site: Site) -> None:
    start = time.monotonic()
    err = refused(fetcher(), site.url("/huge"), max_bytes=10_000)
    assert err.code == "too_large" and "10000 bytes" in err.reason
    assert time.monotonic() - start < TIMEOUT_S  # stopped reading, did not wait out 16 MiB


def test_a_declared_length_over_the_cap_is_refused_before_reading(site: Site) -> None:
    err = refused(fetcher(), site.url("/declared-huge"), max_bytes=10_000)
    assert err.code == "too_large" and "Content-Length 1000000000" in err.reason


def test_a_body_shorter_than_declared_is_a_failed_fetch(site: Site) -> None:
    err = refused(fetcher(), site.url("/short"))
    assert err.code == "fetch_failed" and "10 of 1000 bytes" in err.reason


def test_the_cap_is_inclusive(site: Site) -> None:
    assert fetcher()(site.url("/img.png"), len(PNG)) == PNG
    assert refused(fetcher(), site.url("/img.png"), max_bytes=len(PNG) - 1).code == "too_large"


# --- status codes and redirects ------------------------------------------------------------------

def test_status_other_than_200_is_refused_with_the_status(site: Site) -> None:
    err = refused(fetcher(), site.url("/missing.png"))
    assert err.code == "not_found" and "HTTP 404" in err.reason
    err = refused(fetcher(), site.url("/error"))
    assert err.code == "fetch_failed" and "HTTP 500" in err.reason


@pytest.mark.parametrize("path", ["/redirect", "/redirect-absolute", "/hop/2"])
def test_redirects_within_the_allow_list_are_followed(site: Site, path: str) -> None:
    assert fetcher()(site.url(path), 1 << 20) == PNG


def test_a_redirect_to_another_host_is_not_followed(site: Site) -> None:
    before = len(site.server.requests)
    err = refused(fetcher(), site.url("/redirect-away"))
    assert err.code == "invalid" and "'localhost'" in err.reason and "redirected" in err.reason
    assert site.paths_seen()[before:] == ["/redirect-away"]  # the target was never asked


@pytest.mark.parametrize(("path", "words"), [("/redirect-ftp", "scheme 'ftp'"),
                                              ("/redirect-file", "scheme 'file'"),
                                              ("/redirect-userinfo", "user name or password")])
def test_redirects_are_held_to_the_same_rules(site: Site, path: str, words: str) -> None:
    err = refused(fetcher(), site.url(path))
    assert "redirected" in err.reason and words in err.reason


def test_redirect_loops_and_chains_are_cut(site: Site) -> None:
    err = refused(fetcher(), site.url("/loop"))
    assert err.code == "fetch_failed" and "loop" in err.reason
    err = refused(fetcher(), site.url("/hop/3"))
    assert err.code == "fetch_failed" and "more than 2 redirect" in err.reason
    assert fetcher(url_max_redirects=3)(site.url("/hop/3"), 1 << 20) == PNG
    assert "more than 0" in refused(fetcher(url_max_redirects=0), site.url("/redirect")).reason


# --- https ---------------------------------------------------------------------------------------

def test_https_verifies_the_certificate(tls_site: Site) -> None:
    err = refused(fetcher(url_allow_http=False), tls_site.url("/img.png"))
    assert err.code == "fetch_failed" and "certificate not accepted" in err.reason


def test_https_fetches_and_redirects(tls_site: Site) -> None:
    assert trusting(tls_site)(tls_site.url("/img.png"), 1 << 20) == PNG
    assert trusting(tls_site)(tls_site.url("/redirect"), 1 << 20) == PNG


def test_a_redirect_from_https_to_http_follows_the_scheme_rule(tls_site: Site, site: Site) -> None:
    before = len(site.server.requests)
    err = refused(trusting(tls_site), tls_site.url("/redirect-http"))
    assert err.code == "invalid" and "redirected" in err.reason and "only https" in err.reason
    assert len(site.server.requests) == before
    assert trusting(tls_site, url_allow_http=True)(tls_site.url("/redirect-http"), 1 << 20) == PNG


def test_the_deadline_holds_over_tls(tls_site: Site) -> None:
    start = time.monotonic()
    err = refused(trusting(tls_site), tls_site.url("/drip-headers"))
    assert "timed out" in err.reason and time.monotonic() - start < SLOW_S * 0.8


# --- time ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/slow", "/drip-body", "/drip-headers"])
def test_one_deadline_covers_the_whole_fetch(site: Site, path: str) -> None:
    start = time.monotonic()
    err = refused(fetcher(), site.url(path))
    elapsed = time.monotonic() - start
    assert err.code == "fetch_failed" and f"timed out after {TIMEOUT_S:g} s" in err.reason
    assert TIMEOUT_S * 0.9 <= elapsed < SLOW_S * 0.8, elapsed


def test_a_refused_connection_is_a_failed_fetch() -> None:
    with socket.socket() as s:  # a port that was free a moment ago, with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = refused(fetcher(), f"http://127.0.0.1:{port}/img.png")
    assert err.code == "fetch_failed" and err.reason.startswith("could not fetch http://127.0.0.1:")
    assert "refused" in err.reason


def test_dns_is_inside_the_deadline() -> None:
    async def never(host: str, port: int) -> list[str]:
        await asyncio.sleep(SLOW_S)
        return ["127.0.0.1"]

    start = time.monotonic()
    err = refused(fetcher(url_allow_hosts=["images.test"], allow_networks=LOOPBACK, resolver=never),
                  "http://images.test/img.png")
    assert err.code == "fetch_failed" and "timed out" in err.reason
    assert time.monotonic() - start < SLOW_S * 0.8


def test_a_name_that_does_not_resolve_is_a_failed_fetch() -> None:
    err = refused(fetcher(url_allow_hosts=["images.test"], resolver=answering({})),
                  "http://images.test/img.png")
    assert err.code == "fetch_failed" and "could not resolve 'images.test'" in err.reason
    assert "name or service not known" in err.reason


# --- addresses: what a name resolves to is checked, and connected to ---------------------------

@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("10.1.2.3", "private"),
    ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("169.254.169.254", "link-local"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("100.64.0.1", "not globally"),
    ("198.18.0.1", "private"), ("192.0.2.1", "private"),
    ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"), ("fc00::1", "private"),
    ("fd12:3456::1", "private"), ("ff02::1", "multicast"), ("fec0::1", "site-local"),
    ("2001:db8::1", "private"),
    ("::ffff:127.0.0.1", "loopback 127.0.0.1 as IPv4-mapped"),
    ("::ffff:10.0.0.1", "private 10.0.0.1 as IPv4-mapped"),
    ("::ffff:169.254.169.254", "link-local"),
    ("64:ff9b::a9fe:a9fe", "link-local 169.254.169.254 as NAT64"),
    ("2002:7f00:1::1", "loopback 127.0.0.1 as 6to4"),
])
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    reason = address_refusal(ipaddress.ip_address(address))
    assert reason is not None and reason.startswith(why), reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_allowed_networks_let_their_addresses_through_and_no_other() -> None:
    nets = parse_networks(["127.0.0.0/8", "fd00:1::/64", "10.9.8.7"])
    for ok in ("127.0.0.5", "::ffff:127.0.0.1", "fd00:1::42", "10.9.8.7"):
        assert address_refusal(ipaddress.ip_address(ok), nets) is None, ok
    for bad in ("10.9.8.6", "::1", "fd00:2::1", "169.254.169.254"):
        assert address_refusal(ipaddress.ip_address(bad), nets) is not None, bad
    for wrong in ("10.0.0.1/8", "nonsense", "300.0.0.0/8"):
        with pytest.raises(ValueError, match=re.escape(repr(wrong))):
            parse_networks([wrong])


def test_a_name_resolving_to_loopback_is_refused_unless_its_network_is_allowed(site: Site) -> None:
    before = len(site.server.requests)
    err = refused(fetcher(url_allow_hosts=["localhost"]), site.url("/img.png", host="localhost"))
    assert err.code == "invalid" and "resolves to a private address" in err.reason
    assert "loopback" in err.reason and "'localhost'" in err.reason
    assert len(site.server.requests) == before  # refused before connecting
    allowed = fetcher(url_allow_hosts=["localhost"], allow_networks=LOOPBACK)
    assert allowed(site.url("/img.png", host="localhost"), 1 << 20) == PNG
    # An address written on the allow-list is allowed as itself: no DNS can change it.
    assert fetcher(url_allow_hosts=["127.0.0.1"])(site.url("/img.png"), 1 << 20) == PNG


def test_the_checked_address_is_the_one_connected_to(site: Site) -> None:
    # images.test is in no DNS: reaching the server proves the fetcher used its own answer,
    # and the server sees the name (Host), not the address.
    calls: list[str] = []
    resolve = answering({"images.test": ["127.0.0.1", "10.9.9.9"]}, calls)  # then rebinds
    fetch = fetcher(url_allow_hosts=["images.test"], allow_networks=LOOPBACK, resolver=resolve)
    body = fetch(site.url("/headers", host="images.test"), 1 << 20)
    assert json.loads(body)["Host"] == f"images.test:{site.port}"
    assert calls == ["images.test"]  # asked once for the fetch
    # The next connection's answer is checked again: the rebinding to 10.9.9.9 is refused.
    err = refused(fetch, site.url("/img.png", host="images.test"))
    assert err.code == "invalid" and "10.9.9.9: private" in err.reason


def test_one_bad_address_refuses_the_name(site: Site) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1", "169.254.169.254"]

    before = len(site.server.requests)
    err = refused(fetcher(url_allow_hosts=["images.test"], allow_networks=LOOPBACK,
                          resolver=resolve), site.url("/img.png", host="images.test"))
    assert err.code == "invalid" and "169.254.169.254: link-local" in err.reason
    assert len(site.server.requests) == before


def test_a_redirect_to_an_allow_listed_name_is_checked_where_it_resolves(site: Site) -> None:
    before = len(site.server.requests)
    err = refused(fetcher(url_allow_hosts=["127.0.0.1", "localhost"]), site.url("/redirect-away"))
    assert err.code == "invalid" and "resolves to a private address" in err.reason
    assert site.paths_seen()[before:] == ["/redirect-away"]


def test_the_connection_layer_refuses_hosts_off_the_allow_list() -> None:
    # Below the URL checks: whatever a parser made of a URL, no socket opens to another host.
    fetch = fetcher()
    with pytest.raises(InvalidInput, match="not on the image URL allow-list"):
        asyncio.run(fetch.checked_addresses("localhost", 80))
    assert asyncio.run(fetch.checked_addresses("127.0.0.1", 80)) == ["127.0.0.1"]


def test_https_by_name_connects_to_the_address_and_verifies_the_name(tls_site: Site) -> None:
    resolve = answering({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    fetch = ImageUrlFetcher(ImageDecodeConfig(url_allow_hosts=["images.test", "other.test"],
                                              url_timeout_s=TIMEOUT_S),
                            allow_networks=LOOPBACK, resolver=resolve,
                            tls_context=ssl.create_default_context(cafile=tls_site.cafile))
    assert fetch(tls_site.url("/img.png", host="images.test"), 1 << 20) == PNG
    assert tls_site.server.sni[-1] == "images.test"  # SNI is the name, not the address
    # The certificate also names 127.0.0.1, so this fails only because the name is verified.
    err = refused(fetch, tls_site.url("/img.png", host="other.test"))
    assert err.code == "fetch_failed" and "certificate not accepted" in err.reason


# --- the async API -------------------------------------------------------------------------------

def test_fetch_is_awaitable_and_caps_at_max_image_bytes_by_default(site: Site) -> None:
    fetch = fetcher()
    assert asyncio.run(fetch.fetch(site.url("/img.png"))) == PNG
    with pytest.raises(InvalidInput) as info:
        asyncio.run(fetcher(max_image_bytes=1024).fetch(site.url("/img.png")))
    assert info.value.code == "too_large" and "1024 bytes" in info.value.reason
    with pytest.raises(InvalidInput, match="HTTP 404"):
        asyncio.run(fetch.fetch(site.url("/gone.png")))


def test_fetch_many_bounds_concurrency_and_answers_in_order(site: Site) -> None:
    urls = [site.url(f"/wait?i={i}") for i in range(6)]
    urls[3:3] = [site.url("/missing.png"), site.url("/redirect-away")]
    urls.append(urls[0])  # a repeat: fetched once
    before = len(site.server.requests)
    site.server.peak = 0
    start = time.monotonic()
    results = asyncio.run(fetcher(max_concurrency=2).fetch_many(urls))
    elapsed = time.monotonic() - start
    assert len(results) == len(urls)
    assert [r == PNG for r in results] == [True] * 3 + [False] * 2 + [True] * 4
    missing, away = results[3], results[4]
    assert isinstance(missing, InvalidInput) and missing.code == "not_found"
    assert isinstance(away, InvalidInput) and "allow-list" in away.reason
    assert site.server.peak == 2
    assert elapsed >= 3 * WAIT_S * 0.9  # six waits, two at a time
    assert sum(p.startswith("/wait") for p in site.paths_seen()[before:]) == 6
    site.server.peak = 0
    assert asyncio.run(fetcher(max_concurrency=6).fetch_many(urls[:3])) == [PNG] * 3
    assert site.server.peak > 2  # and they do overlap when allowed to
    assert asyncio.run(fetcher().fetch_many([])) == []


def test_fetch_many_gives_each_url_its_own_deadline(site: Site) -> None:
    results = asyncio.run(fetcher().fetch_many([site.url("/slow"), site.url("/img.png")]))
    slow, good = results
    assert isinstance(slow, InvalidInput) and "timed out" in slow.reason
    assert good == PNG


def test_a_compressed_body_is_taken_as_sent_never_expanded(site: Site) -> None:
    body = fetcher()(site.url("/gzip"), 100_000)  # 1 MB if it were decompressed
    assert len(body) < 100_000 and gzip.decompress(body) == b"\0" * 1_000_000


# --- the sync wrapper ----------------------------------------------------------------------------

def test_the_sync_call_works_from_threads_and_inside_a_running_loop(site: Site) -> None:
    fetch = fetcher()
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: fetch(site.url("/img.png"), 1 << 20), range(8))) == [PNG] * 8

    async def sync_code_in_async_code() -> bytes:
        return fetch(site.url("/img.png"), 1 << 20)

    assert asyncio.run(sync_code_in_async_code()) == PNG
    with pytest.raises(ValueError, match="max_bytes"):
        fetch(site.url("/img.png"), 0)


# --- config and factory --------------------------------------------------------------------------

def test_settings_are_validated() -> None:
    assert ImageDecodeConfig().url_max_redirects == 2 and not ImageDecodeConfig().url_allow_http
    for bad in ({"url_max_redirects": 6}, {"url_max_redirects": -1}, {"url_timeout_s": 0},
                {"url_user_agent": "a\r\nX-Injected: 1"}, {"url_user_agent": ""}):
        with pytest.raises(pydantic.ValidationError):
            ImageDecodeConfig(**bad)


def test_url_fetcher_for_needs_an_allow_list() -> None:
    assert url_fetcher_for(ImageDecodeConfig()) is None
    fetch = url_fetcher_for(ImageDecodeConfig(url_allow_hosts=["CDN.example", "[::1]", "Bücher.example"]))
    assert isinstance(fetch, ImageUrlFetcher)
    assert fetch.allow_hosts == {"cdn.example", "::1", "xn--bcher-kva.example"}
    assert fetch.allow_networks == () and fetch.max_concurrency == 8
    assert fetch.connect_timeout_s == 3.0


def test_fetcher_settings_are_validated() -> None:
    config = ImageDecodeConfig(url_allow_hosts=["cdn.example"], url_timeout_s=2.0)
    assert ImageUrlFetcher(config, connect_timeout_s=10).connect_timeout_s == 2.0  # within the total
    for bad in ({"max_concurrency": 0}, {"connect_timeout_s": 0}, {"allow_networks": ["10.0.0.1/8"]}):
        with pytest.raises(ValueError, match=next(iter(bad))[:12]):
            ImageUrlFetcher(config, **bad)


# --- end to end: the decoder and the registry ----------------------------------------------------

def _pdq_only_config() -> SignalsConfig:
    config = SignalsConfig()
    config.text_embedding.enabled = False
    config.content_rules.enabled = False
    images = config.images
    images.sscd.enabled = images.local.enabled = images.ocr.enabled = images.nsfw.enabled = False
    images.decode.url_allow_hosts = ["127.0.0.1"]
    images.decode.url_allow_http = True
    images.decode.url_timeout_s = TIMEOUT_S
    return config


def _listing(listing_id: str, *refs: dict[str, str]) -> Listing:
    return parse_record(Listing, {"listing_id": listing_id, "seller_id": "S1", "title": "a lamp",
                                  "images": list(refs)})


def test_url_images_go_through_the_image_extractors(site: Site) -> None:
    config = _pdq_only_config()
    [pdq] = build_image_extractors(config, fetch_url=url_fetcher_for(config.images.decode))
    by_url, away, missing, second_bad, by_bytes = pdq.extract_batch([
        _listing("L-url", {"url": site.url("/img.png")}),
        _listing("L-away", {"url": site.url("/img.png", host="localhost")}),
        _listing("L-404", {"url": site.url("/gone.png")}),
        _listing("L-2nd", {"data_b64": base64.b64encode(PNG).decode()},
                 {"url": site.url("/redirect-away")}),
        _listing("L-b64", {"data_b64": base64.b64encode(PNG).decode()}),
    ])
    assert by_url.ok and by_url.features["image_pdq"].shape == (1, 32)
    assert by_bytes.ok and (by_url.features["image_pdq"] == by_bytes.features["image_pdq"]).all()
    assert away.error is not None and away.error.field == "images[0].url"
    assert away.error.code == "invalid" and "allow-list" in away.error.reason
    assert missing.error is not None and missing.error.field == "images[0].url"
    assert missing.error.code == "not_found"
    assert second_bad.error is not None and second_bad.error.field == "images[1].url"


def test_the_registry_passes_the_fetcher_on(site: Site, tmp_path: Any) -> None:
    config = _pdq_only_config()
    registry = build_registry(config, tmp_path, fetch_url=url_fetcher_for(config.images.decode))
    good, slow = registry.extract_batch("listing", [
        _listing("L-url", {"url": site.url("/img.png")}),
        _listing("L-slow", {"url": site.url("/slow")}),
    ])
    assert not good.errors and good.features["image_pdq"].shape == (1, 32)
    [err] = slow.errors
    assert err.field == "images[0].url" and err.code == "fetch_failed"
    # Without a fetcher, URL images are refused, never fetched.
    [res] = build_registry(config, tmp_path).extract_batch(
        "listing", [_listing("L-url", {"url": site.url("/img.png")})])
    assert res.errors[0].field == "images[0].url" and "not available" in res.errors[0].reason
