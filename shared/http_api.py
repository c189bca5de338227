"""What both APIs share: clients opened in the lifespan, their dependencies, one error renderer."""

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

import redis
from anyio import to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from shared.auth import ApiKeyStore, Principal, Scope
from shared.errors import ERRORS, ErrorCode, TesseraError
from shared.job_store import JobGone, JobNotFound, JobStore
from shared.job_waits import BLOCK_SLICE_SECONDS, JobWaits
from shared.object_store import ObjectStore
from shared.outages import OUTAGE_ERRORS, outage
from shared.redis_clients import bounded_redis
from shared.schemas import JobRecord
from shared.settings import BaseServiceSettings
from shared.tracing import setup_tracing

logger = logging.getLogger(__name__)

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
    headers = dict(headers or {})
    retry_after = error.details.get("retry_after_seconds")
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if error.code is ErrorCode.unauthorized:
        # RFC 6750: name the scheme, and say when the token presented was the problem.
        auth_error = error.details.get("auth_error")
        headers["WWW-Authenticate"] = 'Bearer realm="tessera"' + (
            f', error="{auth_error}"' if auth_error else "")
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


# The status of an HTTPException raised by the framework (routing, body parsing, security)
# as one of our codes.
_CODE_BY_STATUS = {
    400: ErrorCode.malformed_request, 401: ErrorCode.unauthorized, 403: ErrorCode.forbidden,
    404: ErrorCode.not_found, 405: ErrorCode.method_not_allowed,
    408: ErrorCode.request_timeout, 413: ErrorCode.media_too_large,
    415: ErrorCode.unsupported_media, 422: ErrorCode.invalid_request,
    429: ErrorCode.rate_limited, 503: ErrorCode.service_unavailable,
}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error as problem details: ours, validation, the framework's own
    HTTPExceptions, outages of Redis or S3 (503), and anything unexpected (500)."""

    async def on_tessera_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, TesseraError)
        return problem(error)

    async def on_validation_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        fields = [{"loc": list(item["loc"]), "message": item["msg"]} for item in error.errors()]
        # FastAPI reports a body that is no JSON at all at ("body", offset); a field that
        # must hold JSON (a form's metadata) is an invalid field like any other.
        unparsable = [item for item in error.errors() if item.get("type") == "json_invalid"
                      and len(item["loc"]) == 2 and isinstance(item["loc"][1], int)]
        if unparsable:
            return problem(TesseraError(ErrorCode.malformed_request,
                                        "The body is not valid JSON: "
                                        + str(unparsable[0].get("ctx", {}).get("error", ""))))
        summary = "; ".join(f"{'.'.join(map(str, f['loc']))}: {f['message']}" for f in fields)
        return problem(TesseraError(ErrorCode.invalid_request, summary, errors=fields))

    async def on_model_error(_: Request, error: Exception) -> JSONResponse:
        # A request model built inside a route (e.g. from a chat body) refused its values.
        assert isinstance(error, ValidationError)
        summary = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}"
                            for item in error.errors())
        return problem(TesseraError(ErrorCode.invalid_request, summary))

    async def on_http_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        code = _CODE_BY_STATUS.get(error.status_code, ErrorCode.invalid_request
                                   if error.status_code < 500 else ErrorCode.internal_error)
        # Only a 400 says more than its status (which parser refused the body, and why).
        message = (f"The request body could not be parsed: {error.detail}"
                   if error.status_code == 400 else None)
        return problem(TesseraError(code, message), headers=dict(error.headers or {}))

    async def on_outage(request: Request, error: Exception) -> JSONResponse:
        unavailable = outage(error)
        if unavailable is None:
            raise error  # a bug, not an outage: logged, and answered by on_unexpected
        logger.warning("%s %s: %s", request.method, request.url.path, unavailable.message)
        return problem(unavailable)

    async def on_unexpected(_: Request, error: Exception) -> JSONResponse:
        # Starlette logs the exception itself after this answer.
        return problem(TesseraError(ErrorCode.internal_error,
                                    f"An internal error occurred ({type(error).__name__})."))

    app.add_exception_handler(TesseraError, on_tessera_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_model_error)
    app.add_exception_handler(HTTPException, on_http_error)
    for error_type in OUTAGE_ERRORS:
        app.add_exception_handler(error_type, on_outage)
    app.add_exception_handler(Exception, on_unexpected)


def create_api(settings: BaseServiceSettings, *, title: str, description: str) -> FastAPI:
    """A FastAPI app with tracing, problem-details errors and the shared clients' lifespan."""
    app = FastAPI(title=title, description=description, version="1",
                  lifespan=_lifespan(settings), responses=PROBLEM_RESPONSE)
    install_error_handlers(app)
    # Spans start on the global (proxy) provider, which the lifespan installs.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,livez")

    @app.get("/livez", include_in_schema=False)
    def livez() -> dict[str, str]:
        """The process answers (the liveness probe: a Redis outage must not restart it)."""
        return {"status": "ok"}

    @app.get("/healthz", include_in_schema=False)
    def healthz(request: Request) -> JSONResponse:
        """200 when Redis and S3 answer; else 503 saying which does not (readiness)."""
        checks = _dependency_checks(request.app.state.jobs.redis, request.app.state.objects)
        if all(state == "ok" for state in checks.values()):
            return JSONResponse({"status": "ok", "checks": checks})
        down = ", ".join(name for name, state in checks.items() if state != "ok")
        return problem(TesseraError(ErrorCode.service_unavailable,
                                    f"This API cannot serve requests: {down} not answering.",
                                    checks=checks, retry_after_seconds=5))

    return app


def _dependency_checks(client: redis.Redis, objects: ObjectStore) -> dict[str, str]:
    """"ok", or what went wrong, for each service the API needs."""
    probes: dict[str, Callable[[], object]] = {
        "redis": client.ping, "s3": lambda: objects.client.bucket_exists(objects.bucket)}
    checks = {}
    for name, probe in probes.items():
        try:
            checks[name] = "ok" if probe() else "missing"
        except Exception as error:  # any failure means not ready
            checks[name] = f"{type(error).__name__}: {error}"[:300]
    return checks


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
        commands = bounded_redis(settings.REDIS_URL, timeout_seconds=settings.REDIS_TIMEOUT_SECONDS)
        blocking = bounded_redis(settings.REDIS_URL, timeout_seconds=settings.REDIS_TIMEOUT_SECONDS,
                                 block_seconds=BLOCK_SLICE_SECONDS)
        app.state.jobs = JobStore(commands, settings.KEY_PREFIX)
        app.state.waits = JobWaits(app.state.jobs, JobStore(blocking, settings.KEY_PREFIX))
        app.state.api_keys = ApiKeyStore(commands, settings.KEY_PREFIX)
        yield
        commands.close()
        blocking.close()

    return lifespan


def get_objects(request: Request) -> ObjectStore:
    """The object store opened at start-up."""
    store: ObjectStore = request.app.state.objects
    return store


def get_jobs(request: Request) -> JobStore:
    """The job store opened at start-up."""
    store: JobStore = request.app.state.jobs
    return store


def get_waits(request: Request) -> JobWaits:
    """Waits on job events, on the blocking Redis client opened at start-up."""
    waits: JobWaits = request.app.state.waits
    return waits


ObjectStoreDep = Annotated[ObjectStore, Depends(get_objects)]
JobStoreDep = Annotated[JobStore, Depends(get_jobs)]
JobWaitsDep = Annotated[JobWaits, Depends(get_waits)]

# Declared as security schemes in OpenAPI; the checks are ours (auto_error=False), so every
# refusal is our problem body with a WWW-Authenticate challenge.
_BEARER = HTTPBearer(auto_error=False, description="`Authorization: Bearer tsk_…`")
_API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="The API key alone, instead of Authorization")


def get_principal(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
        x_api_key: Annotated[str | None, Depends(_API_KEY_HEADER)]) -> Principal:
    """The caller, from `Authorization: Bearer <key>` (scheme in any case, RFC 7235) or
    `X-API-Key`, within its rate limit."""
    settings: BaseServiceSettings = request.app.state.settings
    if not settings.AUTH_REQUIRED:
        return ANONYMOUS
    if bearer is None and x_api_key is None:
        if "authorization" in request.headers:
            raise TesseraError(ErrorCode.unauthorized,
                               "The Authorization header must be `Bearer <key>`.",
                               auth_error="invalid_request")
        raise TesseraError(ErrorCode.unauthorized)
    token = (x_api_key or (bearer.credentials if bearer else "")).strip()
    keys: ApiKeyStore = request.app.state.api_keys
    principal = keys.authenticate(token) if token else None
    if principal is None:
        raise TesseraError(ErrorCode.unauthorized, "The API key is unknown or was revoked.",
                           auth_error="invalid_token")
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
