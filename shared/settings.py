"""Settings mixins every service composes into its own settings class (env vars, UPPER_CASE)."""

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, IPvAnyNetwork, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Placeholder secrets are fine on a laptop and refused anywhere else.
LOCAL_SECRETS = {"minioadmin", "whsec_bG9jYWwtZGV2ZWxvcG1lbnQtc2VjcmV0LTMyYnl0ZXM="}


class BaseServiceSettings(BaseSettings):
    """What every service reads: environment, Redis, S3, tracing and the models served."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=True)

    TESSERA_ENV: Literal["local", "production"] = "local"

    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    KEY_PREFIX: str = "tessera"
    # How long an API waits for Redis to answer one command (a blocking read gets its block on
    # top): a frozen Redis then fails requests with 503 instead of holding them.
    REDIS_TIMEOUT_SECONDS: float = Field(default=3.0, gt=0)

    S3_ENDPOINT: str = "http://127.0.0.1:9000"
    S3_ACCESS_KEY: str = "minioadmin"
    S3_SECRET_KEY: SecretStr = SecretStr("minioadmin")
    S3_BUCKET: str = "tessera"
    S3_REGION: str = "us-east-1"
    # How long to wait for S3 to accept a connection or to send the next bytes of an answer.
    S3_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0)

    OTEL_SERVICE_NAME: str = "tessera"
    OTEL_EXPORTER_OTLP_ENDPOINT: str | None = None
    # A JSON-lines file every process appends its spans to: lets tests and the demo read traces.
    TRACING_FILE: str | None = None

    # Where clients reach the results API; links in job objects and webhooks start with it.
    PUBLIC_BASE_URL: str = "http://127.0.0.1:8001"

    DEFAULT_MODEL: str = "tiny-internvl"
    SERVED_MODELS: str = "tiny-internvl"

    # Attempts per stage before a job fails instead of being redelivered again (poison tasks).
    MAX_ATTEMPTS: int = Field(default=3, ge=1)
    # Threads an API process serves requests on (open event streams and long-polls hold one).
    API_THREADS: int = Field(default=400, ge=1)
    # Every API call needs a key (shared/auth.py); false serves everyone as tenant "public".
    AUTH_REQUIRED: bool = True
    RATE_LIMIT_PER_MINUTE: int = Field(default=600, ge=1)
    # A request body must arrive at this average rate once BODY_GRACE_SECONDS have passed,
    # or it is refused with 408: slow clients cannot hold connections open at will.
    BODY_MIN_BYTES_PER_SECOND: int = Field(default=16 * 1024, ge=1)
    BODY_GRACE_SECONDS: float = Field(default=10.0, ge=0)

    # A stage whose worker stops renewing its lease this long is re-queued (shared/leases.py).
    LEASE_SECONDS: float = Field(default=30.0, ge=1)
    # Longer than the longest task, or Redis redelivers tasks that are still running.
    VISIBILITY_TIMEOUT_SECONDS: int = Field(default=3600, ge=60)
    # A running stage that reports no progress this long is stalled: its lease is let go (the
    # stage is re-queued elsewhere) and its process stops beating (and is recycled).
    STAGE_STALL_SECONDS: float = Field(default=120.0, gt=0)
    # How long a stage keeps retrying passing Redis or S3 errors before it gives its attempt up.
    STAGE_RETRY_SECONDS: float = Field(default=120.0, ge=0)
    # Time budgets per attempt: preprocessing, and inference as a base plus seconds per new
    # token the job may generate (per model: each replica reads its own environment).
    PREPROCESS_TIMEOUT_SECONDS: float = Field(default=300.0, gt=0)
    INFERENCE_TIMEOUT_BASE_SECONDS: float = Field(default=60.0, gt=0)
    INFERENCE_TIMEOUT_PER_TOKEN_SECONDS: float = Field(default=0.1, ge=0)
    # Touched by each worker process while its work makes progress; liveness checks read its age.
    HEARTBEAT_FILE: Path | None = None

    def stage_budget_seconds(self, stage: str, max_new_tokens: int) -> float:
        """How long one attempt at a job's stage may run before it fails with stage_timeout."""
        if stage == "preprocess":
            return self.PREPROCESS_TIMEOUT_SECONDS
        return (self.INFERENCE_TIMEOUT_BASE_SECONDS
                + self.INFERENCE_TIMEOUT_PER_TOKEN_SECONDS * max_new_tokens)

    @property
    def served_models(self) -> list[str]:
        """The model names this deployment accepts jobs for."""
        return [name.strip() for name in self.SERVED_MODELS.split(",") if name.strip()]

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Self:
        if self.TESSERA_ENV != "local":
            for name, value in self._secrets().items():
                if value in LOCAL_SECRETS:
                    raise ValueError(f"{name} still has its local placeholder value")
        return self

    def _secrets(self) -> dict[str, str]:
        return {"S3_SECRET_KEY": self.S3_SECRET_KEY.get_secret_value()}


class WebhookSigningSettings(BaseServiceSettings):
    """The secret webhooks are signed with (Standard Webhooks `whsec_` + base64)."""

    WEBHOOK_SECRET: SecretStr = SecretStr("whsec_bG9jYWwtZGV2ZWxvcG1lbnQtc2VjcmV0LTMyYnl0ZXM=")

    def _secrets(self) -> dict[str, str]:
        return {**super()._secrets(), "WEBHOOK_SECRET": self.WEBHOOK_SECRET.get_secret_value()}


class WebhookTargetSettings(BaseServiceSettings):
    """Which webhook URLs may be called: checked at submission and again at every delivery."""

    # Non-public networks webhooks may reach; unset: loopback when TESSERA_ENV=local, else none.
    WEBHOOK_ALLOWED_NETWORKS: list[IPvAnyNetwork] | None = None
    # Plain http:// targets; unset: allowed only when TESSERA_ENV=local.
    WEBHOOK_ALLOW_HTTP: bool | None = None

    @property
    def allowed_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """The non-public networks deliveries may connect to."""
        if self.WEBHOOK_ALLOWED_NETWORKS is not None:
            return tuple(self.WEBHOOK_ALLOWED_NETWORKS)
        return LOOPBACK if self.TESSERA_ENV == "local" else ()

    @property
    def allow_http(self) -> bool:
        """True when http:// webhook URLs are delivered to."""
        if self.WEBHOOK_ALLOW_HTTP is not None:
            return self.WEBHOOK_ALLOW_HTTP
        return self.TESSERA_ENV == "local"


LOOPBACK = (IPv4Network("127.0.0.0/8"), IPv6Network("::1/128"))
