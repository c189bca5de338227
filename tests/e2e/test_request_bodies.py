"""Request bodies are bounded in size (by what could be a valid request) and in time (a
minimum rate): neither a huge nor a trickling body can hold the API's connections."""

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

from scripts.localstack import LocalStack
from tests.client import auth
from tests.conftest import TEST_BODY_GRACE_SECONDS

MIB = 1024 * 1024


def _open(base_url: str, path: str, stack: LocalStack, length: int,
          first_bytes: bytes) -> socket.socket:
    """A connection that sent the headers of a POST and the first bytes of its body."""
    url = urlsplit(base_url)
    sock = socket.create_connection((url.hostname or "", url.port or 80), timeout=30)
    headers = (f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
               f"Authorization: {auth(stack)['Authorization']}\r\n"
               "Content-Type: multipart/form-data; boundary=b\r\n"
               f"Content-Length: {length}\r\n\r\n")
    sock.sendall(headers.encode() + first_bytes)
    return sock


def _status_and_body(sock: socket.socket) -> tuple[int, bytes]:
    """The status of the answer and what came with it, until the server closes."""
    answer = b""
    with sock:
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_bodies_that_trickle_in_are_cut_with_408_and_their_connections_closed(
        stack: LocalStack) -> None:
    started = time.monotonic()
    sockets = [_open(stack.ingest_url, "/v1/jobs", stack, 100_000, b"--b\r\n")
               for _ in range(50)]
    with ThreadPoolExecutor(len(sockets)) as pool:
        answers = list(pool.map(_status_and_body, sockets))
    assert {status for status, _ in answers} == {408}
    assert b'"code":"request_timeout"' in answers[0][1]
    assert time.monotonic() - started < TEST_BODY_GRACE_SECONDS + 10


def test_a_body_larger_than_any_valid_request_is_refused_before_it_is_sent(
        stack: LocalStack) -> None:
    # The largest file the stack allows is a 512 MiB video: 600 MiB cannot be valid.
    status, body = _status_and_body(_open(stack.ingest_url, "/v1/jobs", stack, 600 * MIB, b""))
    assert status == 413 and b"629,145,600 bytes" in body
    control = httpx.post(f"{stack.ingest_url}/v1/uploads", headers=auth(stack),
                         content=b"{" + b" " * (2 * MIB) + b"}")
    assert control.status_code == 413
    assert control.headers["content-type"] == "application/problem+json"
