"""Who may do what: API keys, scopes, tenants and rate limits, over HTTP."""

import httpx
import pytest
import redis

from scripts import api_keys
from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg
from shared.auth import ApiKeyStore, Scope
from shared.settings import BaseServiceSettings
from tests.client import submit, wait_terminal


def _key(settings: BaseServiceSettings, tenant: str, *scopes: Scope,
         rate_limit_per_minute: int | None = None) -> dict[str, str]:
    store = ApiKeyStore(redis.Redis.from_url(settings.REDIS_URL, decode_responses=True),
                        settings.KEY_PREFIX)
    token, _ = store.create(tenant_id=tenant, scopes=list(scopes),
                            rate_limit_per_minute=rate_limit_per_minute)
    return {"Authorization": f"Bearer {token}"}


def _post_job(stack: LocalStack, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{stack.ingest_url}/v1/jobs", headers=headers, timeout=30,
                      data={"prompt": "Hi", "max_new_tokens": "4"},
                      files=[("files", ("p.jpg", sample_jpeg(64, 64)))])


def test_requests_without_a_valid_key_are_401_with_a_bearer_challenge(
        stack: LocalStack) -> None:
    challenges = {}
    for headers in ({}, {"Authorization": "Bearer tsk_nope"}, {"X-API-Key": "nope"},
                    {"Authorization": stack.api_key}, {"Authorization": f"Basic {stack.api_key}"}):
        response = _post_job(stack, headers)
        assert response.status_code == 401, headers
        assert response.json()["code"] == "unauthorized"
        challenges[str(headers)] = response.headers["www-authenticate"]
    assert challenges["{}"] == 'Bearer realm="tessera"'
    assert challenges[str({"Authorization": "Bearer tsk_nope"})] == \
        'Bearer realm="tessera", error="invalid_token"'
    # A bare key (no scheme) is refused: only `Bearer <key>` or X-API-Key carry one.
    assert 'error="invalid_request"' in challenges[str({"Authorization": stack.api_key})]


def test_the_bearer_scheme_is_case_insensitive(stack: LocalStack) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = httpx.get(f"{stack.results_url}/v1/jobs",
                             headers={"Authorization": f"{scheme} {stack.api_key}"})
        assert response.status_code == 200, scheme


def test_a_read_only_key_cannot_submit(stack: LocalStack,
                                       settings: BaseServiceSettings) -> None:
    response = _post_job(stack, _key(settings, "acme", Scope.read))
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


def test_another_tenants_job_answers_404(stack: LocalStack,
                                         settings: BaseServiceSettings) -> None:
    job = wait_terminal(stack, submit(stack, [("p.jpg", sample_jpeg(64, 64))]).json()["id"])
    stranger = _key(settings, "other-tenant", Scope.read, Scope.submit)
    for path in ("", "/result", "/events"):
        response = httpx.get(f"{stack.results_url}/v1/jobs/{job['id']}{path}", headers=stranger)
        assert response.status_code == 404
        assert response.json()["code"] == "job_not_found"
    follow_up = httpx.post(f"{stack.ingest_url}/v1/jobs", headers=stranger,
                           data={"prompt": "More?", "previous_job_id": job["id"]})
    assert follow_up.status_code == 422


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(
        stack: LocalStack, settings: BaseServiceSettings) -> None:
    headers = _key(settings, "acme", Scope.read, rate_limit_per_minute=3)
    url = f"{stack.results_url}/v1/jobs/job_unknown"
    statuses = [httpx.get(url, headers=headers).status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]
    limited = httpx.get(url, headers=headers)
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_the_api_keys_command_makes_a_working_key_and_revokes_it(
        stack: LocalStack, settings: BaseServiceSettings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", settings.REDIS_URL)
    monkeypatch.setenv("KEY_PREFIX", settings.KEY_PREFIX)
    assert api_keys.main(["create", "--tenant", "cli", "--scopes", "read"]) == 0
    first_line, token = capsys.readouterr().out.strip().splitlines()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{stack.results_url}/v1/jobs", headers=headers).status_code == 200
    key_id = first_line.split()[2].rstrip(",")
    assert api_keys.main(["revoke", key_id]) == 0
    assert httpx.get(f"{stack.results_url}/v1/jobs", headers=headers).status_code == 401
