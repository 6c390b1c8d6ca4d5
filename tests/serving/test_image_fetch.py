"""The image URL fetcher against a local HTTP server: every rule, and the decoder end to end.

One ``ThreadingHTTPServer`` on 127.0.0.1 (a free port) serves an image and every way
a URL can go wrong: too big, lying about its length, 404, redirects (allowed, to
another host, to another scheme, in a loop, too many), slow or trickling answers.
Only ``127.0.0.1`` is allow-listed, so ``localhost`` (the same server) is "another host".
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import io
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydantic
import pytest
from PIL import Image

from serving.image_fetch import ImageUrlFetcher, url_fetcher_for
from signals.config import ImageDecodeConfig, SignalsConfig
from signals.errors import InvalidInput
from signals.registry import build_image_extractors, build_registry
from signals.schemas import Listing, parse_record

TIMEOUT_S = 0.5  # the slow endpoints take well past it
SLOW_S = 1.5


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
    """A certificate for 127.0.0.1 and its key, as PEM files (needs ``cryptography``)."""
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
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
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


def fetcher(**settings: Any) -> ImageUrlFetcher:
    base: dict[str, Any] = {"url_allow_hosts": ["127.0.0.1"], "url_allow_http": True,
                            "url_timeout_s": TIMEOUT_S}
    return ImageUrlFetcher(ImageDecodeConfig(**{**base, **settings}))


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
    fetch = fetcher(url_allow_hosts=["LocalHost"])
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


# --- config and factory --------------------------------------------------------------------------

def test_settings_are_validated() -> None:
    assert ImageDecodeConfig().url_max_redirects == 2 and not ImageDecodeConfig().url_allow_http
    for bad in ({"url_max_redirects": 6}, {"url_max_redirects": -1}, {"url_timeout_s": 0},
                {"url_user_agent": "a\r\nX-Injected: 1"}, {"url_user_agent": ""}):
        with pytest.raises(pydantic.ValidationError):
            ImageDecodeConfig(**bad)


def test_url_fetcher_for_needs_an_allow_list() -> None:
    assert url_fetcher_for(ImageDecodeConfig()) is None
    fetch = url_fetcher_for(ImageDecodeConfig(url_allow_hosts=["CDN.example"]))
    assert isinstance(fetch, ImageUrlFetcher) and fetch.allow_hosts == {"cdn.example"}


# --- end to end: the decoder and the registry ----------------------------------------------------

def _pdq_only_config() -> SignalsConfig:
    config = SignalsConfig()
    config.text_embedding.enabled = False
    config.content_rules.enabled = False
    images = config.images
    images.sscd.enabled = images.ocr.enabled = images.nsfw.enabled = False
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
