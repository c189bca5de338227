"""Outbound URLs a client gave us (media, webhooks): only public hosts, checked when connecting."""

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from shared.errors import ErrorCode, TesseraError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The host name and its A/AAAA answers, as IP strings.
Resolver = Callable[[str], Iterable[str]]

MAX_REDIRECTS = 5

# Cloud metadata services: refused even inside a network a test explicitly allows.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.253", "100.100.100.200", "192.0.0.192",
    "fd00:ec2::254", "fd00:ec2::23"))
# Names that reach internal services whatever DNS says about them.
_BLOCKED_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal", "metadata.goog",
                            "instance-data", "instance-data.ec2.internal", "kubernetes.default"})
# Special-use and private-use TLDs (RFC 6761, RFC 6762, ICANN's .internal).
_BLOCKED_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa", ".lan",
                     ".intranet", ".corp", ".svc", ".cluster.local")
# inet_aton() also reads 2130706433, 0x7f.1 or 0177.0.0.1 as addresses; so do some HTTP clients.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=5)


@dataclass(frozen=True)
class ResolvedTarget:
    """A URL that passed the checks, with the addresses its host resolved to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def system_resolver(host: str) -> list[str]:
    """All A and AAAA answers for host, from the system resolver."""
    answers = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in answers))


def check_public_url(url: str, *, allow_http: bool = False, resolver: Resolver = system_resolver,
                     allowed_networks: Sequence[IPNetwork] = ()) -> ResolvedTarget:
    """Refuse a URL unless it is https and every address its host resolves to is public.

    `allowed_networks` admits non-public networks (tests serve from 127.0.0.1); metadata
    addresses stay refused.
    """
    scheme, host, port = check_url_syntax(url, allow_http=allow_http)
    addresses = resolve_public(host, resolver=resolver, allowed_networks=allowed_networks)
    return ResolvedTarget(url, scheme, host, port, addresses)


def check_url_syntax(url: str, *, allow_http: bool = False) -> tuple[str, str, int]:
    """The scheme, normalised host and port of a URL that may be fetched (no DNS yet)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise _refused(url, f"it is not a valid URL ({error})") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme.lower() not in schemes:
        raise _refused(url, "only http:// and https:// URLs are accepted" if allow_http
                       else "only https:// URLs are accepted")
    if parts.username is not None or parts.password is not None:
        raise _refused(url, "it carries credentials (user@host); put access tokens in the path "
                            "or query of a presigned URL instead")
    host = normalise_host(url, parts.hostname or "")
    scheme = parts.scheme.lower()
    return scheme, host, port or (443 if scheme == "https" else 80)


def normalise_host(url: str, host: str) -> str:
    """The lower-case ASCII host name or canonical IP literal; refuses internal names."""
    if not host:
        raise _refused(url, "it has no host")
    if "%" in host:
        raise _refused(url, "its host is percent-encoded or carries an IPv6 zone")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        return str(literal)
    try:
        # The codec applies IDNA mapping, so look-alike dots ("。") become "." before checks.
        name = host.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        raise _refused(url, f"its host {host!r} is not a valid domain name") from None
    if _NUMERIC_HOST.match(name):
        raise _refused(url, f"its host {host!r} is a numeric address in a non-standard spelling "
                            "(decimal, octal or hex); write IPv4 addresses as a.b.c.d")
    if name in _BLOCKED_NAMES or name.endswith(_BLOCKED_SUFFIXES):
        raise _refused(url, f"{name!r} names an internal service")
    if "." not in name:
        raise _refused(url, f"{name!r} is not a fully qualified public domain name")
    return name


def resolve_public(host: str, *, resolver: Resolver = system_resolver,
                   allowed_networks: Sequence[IPNetwork] = ()) -> tuple[IPAddress, ...]:
    """Every address host resolves to, refusing all of them if any one is not public."""
    addresses: tuple[IPAddress, ...]
    try:
        addresses = (ipaddress.ip_address(host),)
    except ValueError:
        try:
            addresses = tuple(ipaddress.ip_address(answer) for answer in resolver(host))
        except (OSError, UnicodeError) as error:
            # DNS failures are often transient: a fetch failure (retryable), not a refusal.
            raise TesseraError(ErrorCode.url_fetch_failed,
                               f"The host {host!r} could not be resolved ({error}): check the "
                               "URL, or retry if its DNS is failing.", host=host) from None
    if not addresses:
        raise TesseraError(ErrorCode.url_fetch_failed,
                           f"The host {host!r} has no addresses: check the URL.", host=host)
    addresses = tuple(dict.fromkeys(connect_address(address) for address in addresses))
    for address in addresses:
        reason = refusal_reason(address, allowed_networks)
        if reason is not None:
            # One bad answer refuses the host: a later lookup could hand that one out.
            raise TesseraError(ErrorCode.url_not_allowed,
                               f"The host {host!r} resolves to {address}, {reason}; only "
                               "public internet addresses can be fetched.",
                               host=host, address=str(address))
    return addresses


def refusal_reason(address: IPAddress,
                   allowed_networks: Sequence[IPNetwork] = ()) -> str | None:
    """Why an address may not be connected to, or None when it is public (or allowed).

    An IPv4-mapped address is its IPv4 address (that is where it connects). Other IPv6 forms
    that embed an IPv4 address (6to4, Teredo, NAT64, IPv4-compatible) reach that host through
    a relay or translator: they are refused when the IPv4 address is not public, whatever
    `allowed_networks` admit, because the connection goes to the IPv6 address and not to the
    allowed IPv4 one (2002:7f00:1:: is not loopback).
    """
    address = connect_address(address)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if any(address in network for network in allowed_networks):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        inner = None if embedded is None else refusal_reason(embedded)
        if inner is not None:
            return f"an IPv6 form of {embedded} ({inner})"
    checks: tuple[tuple[bool, str], ...] = (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address in _CGNAT, "a carrier-grade NAT (shared) address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a globally routable address"),
    )
    return next((reason for refused, reason in checks if refused), None)


def connect_address(address: IPAddress) -> IPAddress:
    """The address a connection to address goes to: an IPv4-mapped one is its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4, Teredo, NAT64 or IPv4-compatible form carries."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    # ::/96 held IPv4-compatible addresses (deprecated); :: and ::1 are checked as themselves.
    if any(address in network for network in _NAT64) or 1 < int(address) < 2**32:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _refused(url: str, reason: str) -> TesseraError:
    return TesseraError(ErrorCode.url_not_allowed,
                        f"The URL {url[:200]!r} cannot be fetched: {reason}.")


class UrlNotAllowed(httpx.TransportError):
    """A request (or a redirect) the policy refuses, or whose host does not resolve.

    `error` carries the code: url_not_allowed for a refusal, url_fetch_failed for DNS.
    """

    def __init__(self, error: TesseraError) -> None:
        super().__init__(error.message)
        self.error = error


class _PinnedBackend(httpcore.NetworkBackend):
    """Resolves and checks at connect time, then connects to a checked IP, never the name.

    Checking and connecting in one step leaves no window for DNS rebinding; TLS still uses
    the URL's host name for SNI and certificate checks, because httpcore takes it from the URL.
    """

    def __init__(self, resolver: Resolver, allowed_networks: Sequence[IPNetwork]) -> None:
        self._inner = httpcore.SyncBackend()
        self._resolver = resolver
        self._allowed_networks = allowed_networks

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        try:
            addresses = resolve_public(host, resolver=self._resolver,
                                       allowed_networks=self._allowed_networks)
        except TesseraError as error:
            raise UrlNotAllowed(error) from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(str(address), port, timeout, local_address,
                                               socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class PublicTransport(httpx.HTTPTransport):
    """An httpx transport that only reaches public addresses, re-checked on every connection."""

    def __init__(self, *, allow_http: bool = False, resolver: Resolver = system_resolver,
                 allowed_networks: Sequence[IPNetwork] = (),
                 limits: httpx.Limits = _LIMITS) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._allow_http = allow_http
        # httpx has no public hook for the network backend; its pool is rebuilt with ours.
        # No proxy: a proxy would resolve the name itself, after our check.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(resolver, allowed_networks),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Refuse a disallowed scheme or host name before connecting (redirects included);
        a refusal carries the request it refused, so callers can tell a redirect's."""
        try:
            try:
                check_url_syntax(str(request.url), allow_http=self._allow_http)
            except TesseraError as error:
                raise UrlNotAllowed(error) from None
            return super().handle_request(request)
        except UrlNotAllowed as refused:
            refused.request = request
            raise


def public_client(*, allow_http: bool = False, resolver: Resolver = system_resolver,
                  allowed_networks: Sequence[IPNetwork] = (), follow_redirects: bool = True,
                  timeout: float = 30.0) -> httpx.Client:
    """An httpx client for client-supplied URLs: public hosts only, at most 5 redirects."""
    transport = PublicTransport(allow_http=allow_http, resolver=resolver,
                                allowed_networks=allowed_networks)
    return httpx.Client(transport=transport, trust_env=False, follow_redirects=follow_redirects,
                        max_redirects=MAX_REDIRECTS, timeout=timeout)
