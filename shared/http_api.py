"""What both APIs share: clients opened in the lifespan, their dependencies, one error renderer."""

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

import redis
from anyio import to_thread
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from pydantic import ValidationError

from shared.auth import ApiKeyStore, Principal, Scope
from shared.errors import ERRORS, ErrorCode, TesseraError
from shared.job_store import JobGone, JobNotFound, JobStore
from shared.object_store import ObjectStore
from shared.schemas import JobRecord
from shared.settings import BaseServiceSettings
from shared.tracing import setup_tracing

PROBLEM_TYPE_BASE = "https://tessera.dev/errors/"
# The documented error body: RFC 9457 problem details plus our stable code.
PROBLEM_RESPONSE: dict[int | str, dict[str, Any]] = {
    "default": {
        "description": "An error, as `application/problem+json` with a stable `code`.",
        "content": {"application/problem+json": {"schema": {
            "type": "object",
            "required": ["type", "title", "status", "code", "detail"],
            "properties": {
                "type": {"type": "string"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"},
                "code": {"type": "string", "enum": [code.value for code in ErrorCode]},
            },
        }}},
    },
}


def problem(error: TesseraError, headers: dict[str, str] | None = None) -> JSONResponse:
    """Render an error as problem details (with Retry-After when the error says when)."""
    retry_after = error.details.get("retry_after_seconds")
    if retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(retry_after)}
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + error.code.value,
        "title": ERRORS[error.code].message,
        "status": error.http_status,
        "code": error.code.value,
        "detail": error.message,
        **error.details,
    }
    return JSONResponse(body, status_code=error.http_status, headers=headers,
                        media_type="application/problem+json")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every TesseraError and validation error as problem details."""

    async def on_tessera_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, TesseraError)
        return problem(error)

    async def on_validation_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        fields = [{"loc": list(item["loc"]), "message": item["msg"]} for item in error.errors()]
        summary = "; ".join(f"{'.'.join(map(str, f['loc']))}: {f['message']}" for f in fields)
        return problem(TesseraError(ErrorCode.invalid_request, summary, errors=fields))

    async def on_model_error(_: Request, error: Exception) -> JSONResponse:
        # A request model built inside a route (e.g. from a chat body) refused its values.
        assert isinstance(error, ValidationError)
        summary = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}"
                            for item in error.errors())
        return problem(TesseraError(ErrorCode.invalid_request, summary))

    app.add_exception_handler(TesseraError, on_tessera_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_model_error)


def create_api(settings: BaseServiceSettings, *, title: str, description: str) -> FastAPI:
    """A FastAPI app with tracing, problem-details errors and the shared clients' lifespan."""
    app = FastAPI(title=title, description=description, version="1",
                  lifespan=_lifespan(settings), responses=PROBLEM_RESPONSE)
    install_error_handlers(app)
    # Spans start on the global (proxy) provider, which the lifespan installs.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _lifespan(
        settings: BaseServiceSettings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_tracing(settings.OTEL_SERVICE_NAME, settings)
        # Routes are sync and run on worker threads; event streams and long-polls wait in Redis
        # for minutes, so allow many more threads than AnyIO's default 40 (they sit idle).
        to_thread.current_default_thread_limiter().total_tokens = settings.API_THREADS
        app.state.settings = settings
        app.state.objects = ObjectStore(settings)
        app.state.objects.ensure_bucket()
        app.state.jobs = JobStore.from_url(settings.REDIS_URL, settings.KEY_PREFIX)
        app.state.api_keys = ApiKeyStore(app.state.jobs.redis, settings.KEY_PREFIX)
        yield
        app.state.jobs.redis.close()

    return lifespan


def get_objects(request: Request) -> ObjectStore:
    """The object store opened at start-up."""
    store: ObjectStore = request.app.state.objects
    return store


def get_jobs(request: Request) -> JobStore:
    """The job store opened at start-up."""
    store: JobStore = request.app.state.jobs
    return store


ObjectStoreDep = Annotated[ObjectStore, Depends(get_objects)]
JobStoreDep = Annotated[JobStore, Depends(get_jobs)]


def get_principal(request: Request,
                  authorization: Annotated[str | None, Header()] = None,
                  x_api_key: Annotated[str | None, Header()] = None) -> Principal:
    """The caller, from `Authorization: Bearer <key>` or `X-API-Key`, within its rate limit."""
    settings: BaseServiceSettings = request.app.state.settings
    if not settings.AUTH_REQUIRED:
        return ANONYMOUS
    token = x_api_key or (authorization or "").removeprefix("Bearer ").strip()
    keys: ApiKeyStore = request.app.state.api_keys
    principal = keys.authenticate(token) if token else None
    if principal is None:
        raise TesseraError(ErrorCode.unauthorized)
    _count_request(request.app.state.jobs.redis, settings, principal)
    return principal


def require(scope: Scope) -> Callable[[Principal], Principal]:
    """A dependency that lets through callers whose key has scope (admin has them all)."""

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if scope not in principal.scopes and Scope.admin not in principal.scopes:
            raise TesseraError(ErrorCode.forbidden,
                               f"This API key lacks the {scope.value!r} scope.")
        return principal

    return check


def _count_request(client: redis.Redis, settings: BaseServiceSettings,
                   principal: Principal) -> None:
    """Fixed one-minute windows per key; over the limit answers 429 with Retry-After."""
    limit = principal.rate_limit_per_minute or settings.RATE_LIMIT_PER_MINUTE
    now = time.time()
    window = int(now // 60)
    key = f"{settings.KEY_PREFIX}:rate:{principal.key_id}:{window}"
    with client.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, 61)
        count, _ = pipe.execute()
    if count > limit:
        raise TesseraError(ErrorCode.rate_limited,
                           f"This API key may make {limit} requests a minute.",
                           retry_after_seconds=max(1, int((window + 1) * 60 - now)))


ANONYMOUS = Principal("anonymous", "public", frozenset(Scope))
SubmitterDep = Annotated[Principal, Depends(require(Scope.submit))]
ReaderDep = Annotated[Principal, Depends(require(Scope.read))]


def tenant_job(jobs: JobStore, job_id: str, principal: Principal) -> JobRecord:
    """The caller's job: 404 job_not_found for unknown ids and other tenants' jobs,
    410 result_gone for the caller's jobs purged by retention."""
    try:
        record = jobs.get(job_id)
    except JobGone as gone:
        if gone.tenant_id == principal.tenant_id:
            raise TesseraError(ErrorCode.result_gone,
                               f"Job {job_id} and its result were deleted when its retention "
                               "period ended.") from None
        record = None
    except JobNotFound:
        record = None
    if record is None or record.tenant_id != principal.tenant_id:
        raise TesseraError(ErrorCode.job_not_found, f"No job has the id {job_id!r}.")
    return record


def readable_job(job_id: str, jobs: JobStoreDep, principal: ReaderDep) -> JobRecord:
    """The job in the path, for a caller with the read scope."""
    return tenant_job(jobs, job_id, principal)


def steerable_job(job_id: str, jobs: JobStoreDep, principal: SubmitterDep) -> JobRecord:
    """The job in the path, for a caller with the submit scope (cancel, retry, redeliver)."""
    return tenant_job(jobs, job_id, principal)


JobDep = Annotated[JobRecord, Depends(readable_job)]
OwnJobDep = Annotated[JobRecord, Depends(steerable_job)]
