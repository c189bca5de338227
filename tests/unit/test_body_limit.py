"""Request bodies over the limit are refused, whether their length is declared or not."""

from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.body_limit import BodyLimit


async def _echo_size(request: Request) -> JSONResponse:
    return JSONResponse({"size": len(await request.body())})


def _client(limit: int) -> TestClient:
    app = Starlette(routes=[Route("/", _echo_size, methods=["POST"]),
                            Route("/big", _echo_size, methods=["POST"])])
    limits = {"/": limit, "/big": 3 * limit}
    return TestClient(BodyLimit(app, max_bytes_for=limits.__getitem__,
                                min_bytes_per_second=1024, grace_seconds=10))


def _chunks(count: int, size: int) -> Iterator[bytes]:
    for _ in range(count):
        yield b"x" * size


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    response = _client(1000).post("/", content=b"x" * 1001)
    assert response.status_code == 413
    assert response.json()["code"] == "media_too_large"
    # The real size and the real limit, exactly (rounding once said "over 1024 MiB; the limit
    # is 1024 MiB").
    assert "is 1,001 bytes; POST / accepts at most 1,000 bytes" in response.json()["detail"]


def test_each_path_has_its_own_limit() -> None:
    assert _client(1000).post("/big", content=b"x" * 2500).json() == {"size": 2500}
    assert _client(1000).post("/", content=b"x" * 2500).status_code == 413


def test_a_chunked_body_is_cut_and_refused_once_it_passes_the_limit() -> None:
    response = _client(1000).post("/", content=_chunks(10, 500))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


def test_bodies_within_the_limit_pass_whole() -> None:
    assert _client(1000).post("/", content=_chunks(2, 500)).json() == {"size": 1000}
