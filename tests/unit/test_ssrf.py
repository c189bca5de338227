"""Client-supplied URLs reach public addresses only, whatever the spelling or DNS answer."""

import ipaddress
from collections.abc import Iterable

import httpx
import pytest

from shared.errors import ErrorCode, TesseraError
from shared.ssrf import (
    Resolver,
    UrlNotAllowed,
    check_public_url,
    public_client,
)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def fake_dns(answers: dict[str, list[str]]) -> Resolver:
    """A resolver that answers from a table and never touches the network."""

    def resolve(host: str) -> Iterable[str]:
        if host not in answers:
            raise OSError(f"no such host {host}")
        return answers[host]

    return resolve


DNS = fake_dns({
    "media.example.com": [PUBLIC_V4, PUBLIC_V6],
    "rebind.example.com": [PUBLIC_V4, "10.0.0.5"],
    "v6private.example.com": [PUBLIC_V6, "fd12::1"],
    "meta.example.com": ["169.254.169.254"],
    "empty.example.com": [],
})


@pytest.mark.parametrize("url", [
    # Loopback, private, link-local, CGNAT, multicast, reserved, unspecified.
    "https://127.0.0.1/", "https://127.8.9.10/", "https://10.1.2.3/", "https://172.16.0.1/",
    "https://192.168.1.1/", "https://169.254.1.1/", "https://100.64.0.1/",
    "https://100.127.255.254/", "https://224.0.0.1/", "https://239.255.255.250/",
    "https://240.0.0.1/", "https://255.255.255.255/", "https://0.0.0.0/", "https://198.18.0.1/",
    "https://192.0.2.1/",
    # Cloud metadata services.
    "https://169.254.169.254/latest/meta-data/", "https://[fd00:ec2::254]/",
    "https://100.100.100.200/", "https://metadata.google.internal/computeMetadata/v1/",
    "https://metadata/", "https://instance-data/", "https://meta.example.com/",
    # IPv6 brackets and IPv4 embedded in IPv6.
    "https://[::1]/", "https://[::]/", "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/", "https://[::ffff:169.254.169.254]/", "https://[fe80::1]/",
    "https://[fe80::1%25eth0]/", "https://[fc00::1]/", "https://[fd12:3456::1]/",
    "https://[ff02::1]/", "https://[64:ff9b::7f00:1]/", "https://[64:ff9b::a9fe:a9fe]/",
    "https://[2002:7f00:1::]/", "https://[2002:a00:1::]/", "https://[::127.0.0.1]/",
    "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "https://[::1]:8443/x",
    # Decimal, octal, hex and short IPv4 spellings.
    "http://2130706433/", "https://2130706433/", "https://0177.0.0.1/", "https://0x7f.0.0.1/",
    "https://0x7f000001/", "https://127.1/", "https://0/", "https://017700000001/",
    "https://0251.0376.0251.0376/", "https://3232235777/",
    # Internal names, trailing dots, look-alike dots, percent-encoding.
    "https://localhost/", "https://LOCALHOST./", "https://api.localhost/", "https://printer.local/",
    "https://db.internal/", "https://redis/", "https://minio:9000/", "https://127.0.0.%31/",
    "https://metadata\u3002google\u3002internal/",
    # DNS answers that mix public and private addresses; names that do not resolve.
    "https://rebind.example.com/", "https://v6private.example.com/",
    "https://unknown.example.com/", "https://empty.example.com/",
    # Wrong scheme, credentials, no host.
    "http://media.example.com/", "ftp://media.example.com/x", "file:///etc/passwd",
    "gopher://media.example.com/", "https://user:pw@media.example.com/", "https:///x", "not a url",
    "https://media.example.com:99999/",
])
def test_check_public_url_refuses_non_public_targets(url: str) -> None:
    with pytest.raises(TesseraError) as refused:
        check_public_url(url, resolver=DNS)
    assert refused.value.message


def test_refusals_name_the_address_and_the_reason() -> None:
    with pytest.raises(TesseraError) as refused:
        check_public_url("https://rebind.example.com/a.jpg", resolver=DNS)
    assert refused.value.code == ErrorCode.url_not_allowed
    assert "10.0.0.5" in refused.value.message and "private" in refused.value.message
    with pytest.raises(TesseraError) as metadata:
        check_public_url("https://[::ffff:169.254.169.254]/", resolver=DNS)
    assert "metadata" in metadata.value.message


@pytest.mark.parametrize("url", ["https://unknown.example.com/", "https://empty.example.com/"])
def test_a_host_that_does_not_resolve_is_a_retryable_fetch_failure(url: str) -> None:
    with pytest.raises(TesseraError) as failed:
        check_public_url(url, resolver=DNS)
    assert failed.value.code == ErrorCode.url_fetch_failed and failed.value.retryable


@pytest.mark.parametrize(("url", "host", "port"), [
    ("https://media.example.com/a.jpg", "media.example.com", 443),
    ("https://MEDIA.example.com./a.jpg", "media.example.com", 443),
    (f"https://{PUBLIC_V4}:8443/x", PUBLIC_V4, 8443),
    (f"https://[{PUBLIC_V6}]/x", PUBLIC_V6, 443),
])
def test_check_public_url_accepts_public_https(url: str, host: str, port: int) -> None:
    target = check_public_url(url, resolver=DNS)
    assert (target.scheme, target.host, target.port) == ("https", host, port)
    assert all(address.is_global for address in target.addresses)


def test_every_address_of_a_host_is_returned() -> None:
    target = check_public_url("https://media.example.com/", resolver=DNS)
    assert {str(address) for address in target.addresses} == {PUBLIC_V4, PUBLIC_V6}


def test_http_only_when_allowed() -> None:
    assert check_public_url("http://media.example.com/", allow_http=True, resolver=DNS).port == 80


def test_allowed_networks_admit_a_test_server_but_never_metadata() -> None:
    loopback = [ipaddress.ip_network("127.0.0.0/8")]
    assert check_public_url("http://127.0.0.1:8080/", allow_http=True,
                            allowed_networks=loopback).port == 8080
    everything = [ipaddress.ip_network("0.0.0.0/0")]
    with pytest.raises(TesseraError):
        check_public_url("https://169.254.169.254/", allowed_networks=everything)


def test_transport_refuses_before_connecting_and_after_rebinding() -> None:
    # The pre-check passes on the first answer; the connection re-resolves and gets another.
    answers = iter([[PUBLIC_V4], ["127.0.0.1"]])

    def rebinding(host: str) -> Iterable[str]:
        return next(answers)

    check_public_url("https://rebinding.example.com/", resolver=rebinding)
    with public_client(resolver=rebinding) as client, pytest.raises(UrlNotAllowed) as refused:
        client.get("https://rebinding.example.com/")
    assert "127.0.0.1" in refused.value.error.message
    with public_client(resolver=DNS) as client, pytest.raises(httpx.HTTPError):
        client.get("http://media.example.com/")


LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize("host", [
    "[2002:7f00:1::]", "[2002:7f00:ffff:1::1]",  # 6to4
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo
    "[64:ff9b::7f00:1]", "[64:ff9b:1::7f00:1]",  # NAT64
    "[::127.0.0.1]",  # IPv4-compatible
])
def test_an_allowed_ipv4_network_does_not_admit_ipv6_forms_that_embed_it(host: str) -> None:
    # The connection would go to the IPv6 address (a relay), not to the allowed loopback.
    with pytest.raises(TesseraError) as refused:
        check_public_url(f"http://{host}/", allow_http=True, allowed_networks=LOOPBACK_ONLY,
                         resolver=DNS)
    assert refused.value.code is ErrorCode.url_not_allowed
    assert "an IPv6 form of 127." in refused.value.message


def test_an_ipv4_mapped_address_is_checked_and_connected_to_as_its_ipv4_address() -> None:
    target = check_public_url("http://[::ffff:127.0.0.1]/", allow_http=True,
                              allowed_networks=LOOPBACK_ONLY, resolver=DNS)
    assert target.addresses == (ipaddress.IPv4Address("127.0.0.1"),)


def test_a_refused_scheme_names_the_schemes_that_are_allowed() -> None:
    for allow_http, allowed in ((False, "only https:// URLs"),
                                (True, "only http:// and https:// URLs")):
        with pytest.raises(TesseraError) as refused:
            check_public_url("ftp://media.example.com/a.jpg", allow_http=allow_http,
                             resolver=DNS)
        assert allowed in refused.value.message
