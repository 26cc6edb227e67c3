"""Where the gateway's own database credential comes from.

Clients never see this credential. Each source resolves to an UpstreamTarget; the socket
code calls ``invalidate()`` when upstream refuses the password (a rotated secret, an expired
token) and resolves again. boto3 is imported only when an AWS source first resolves.
"""

import asyncio
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from custos.upstream.dsn import target_from_dsn
from custos.upstream.errors import (
    UpstreamConfigurationError,
    UpstreamError,
    UpstreamUnavailable,
)
from custos.upstream.settings import RdsIamSettings, UpstreamSettings
from custos.upstream.target import UpstreamTarget

# IAM auth tokens are valid for 15 minutes; renewing after 10 leaves room for slow connects.
IAM_TOKEN_REUSE_SECONDS = 600

_POSTGRES_ENGINES = frozenset({"postgres", "aurora-postgresql"})
# RDS creates a "postgres" database on every PostgreSQL instance; RDS secrets often omit dbname.
_RDS_DEFAULT_DATABASE = "postgres"

ClientFactory = Callable[[], Any]
Clock = Callable[[], float]


class CredentialSource(Protocol):
    async def resolve(self) -> UpstreamTarget:
        """The target to connect to now, from cache when still fresh."""
        ...

    def invalidate(self) -> None:
        """Forget the cached credential; the next resolve fetches a new one."""
        ...


class DsnCredentials:
    """A fixed target from a libpq connection string, checked when the gateway starts."""

    def __init__(self, settings: UpstreamSettings) -> None:
        if settings.dsn is None:
            raise UpstreamConfigurationError("DsnCredentials needs upstream.dsn to be set")
        self._target = target_from_dsn(
            settings.dsn.get_secret_value(),
            sslmode=settings.sslmode,
            sslrootcert=_path_text(settings),
        )

    async def resolve(self) -> UpstreamTarget:
        return self._target

    def invalidate(self) -> None:
        """A DSN has nothing to refetch: a refused password stays refused until reconfigured."""


@dataclass(frozen=True, slots=True)
class _Cached:
    target: UpstreamTarget
    expires_at: float


class _RefreshingSource(ABC):
    """Caches a fetched target for a while.

    Concurrent resolves share one fetch and its outcome, so an AWS outage costs one call
    per attempt rather than one per waiting connection.
    """

    def __init__(self, reuse_seconds: float, clock: Clock, client_factory: ClientFactory) -> None:
        self._reuse_seconds = reuse_seconds
        self._clock = clock
        self._client_factory = client_factory
        self._client: Any = None
        self._cached: _Cached | None = None
        self._inflight: asyncio.Task[UpstreamTarget] | None = None

    async def resolve(self) -> UpstreamTarget:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._refresh())
            # Consumed here too, so a fetch whose waiters were all cancelled logs nothing.
            self._inflight.add_done_callback(_consume_outcome)
        # One waiter giving up (a client disconnecting) must not cancel the others' fetch.
        return await asyncio.shield(self._inflight)

    def invalidate(self) -> None:
        self._cached = None

    async def _refresh(self) -> UpstreamTarget:
        try:
            target = await asyncio.to_thread(self._fetch)
            self._cached = _Cached(target, self._clock() + self._reuse_seconds)
            return target
        finally:
            self._inflight = None

    def _aws_client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _fresh(self) -> UpstreamTarget | None:
        cached = self._cached
        if cached is not None and self._clock() < cached.expires_at:
            return cached.target
        return None

    @abstractmethod
    def _fetch(self) -> UpstreamTarget:
        """Runs in a worker thread: boto3 calls block."""


class SecretsManagerCredentials(_RefreshingSource):
    """A secret in the RDS JSON shape: host, port, username, password, dbname, engine."""

    def __init__(
        self,
        settings: UpstreamSettings,
        client_factory: ClientFactory | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if settings.secret_id is None:
            raise UpstreamConfigurationError(
                "SecretsManagerCredentials needs upstream.secret_id to be set"
            )
        super().__init__(settings.secret_ttl_seconds, clock, client_factory or self._default_client)
        self._settings = settings
        self._secret_id = settings.secret_id

    def _default_client(self) -> Any:
        from boto3.session import Session
        from botocore.config import Config

        # A full ARN names its region; for a bare name, botocore itself reads only
        # AWS_DEFAULT_REGION and the config file, while ECS and Lambda also set AWS_REGION.
        arn = self._secret_id.split(":")
        region = arn[3] if arn[0] == "arn" and len(arn) > 3 else None
        timeout = self._settings.connect_timeout_seconds
        return Session().client(
            "secretsmanager",
            region_name=region or os.environ.get("AWS_REGION") or None,
            config=Config(connect_timeout=timeout, read_timeout=timeout),
        )

    def _fetch(self) -> UpstreamTarget:
        from botocore.exceptions import BotoCoreError, ClientError

        secret = f"secret {self._secret_id}"
        try:
            response = self._aws_client().get_secret_value(SecretId=self._secret_id)
        except (BotoCoreError, ClientError) as error:
            raise _aws_failure(
                error,
                doing=f"cannot read {secret}",
                grant="secretsmanager:GetSecretValue on it",
                service="Secrets Manager",
            ) from None
        text = response.get("SecretString")
        if not isinstance(text, str):
            raise UpstreamConfigurationError(
                f"{secret} holds binary data; store the RDS secret JSON "
                "(host, port, username, password, dbname) as its secret string"
            )
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamConfigurationError(
                f"{secret} is not a JSON object; store the RDS secret JSON "
                '{"host": ..., "port": 5432, "username": ..., "password": ..., "dbname": ...}'
            )
        return self._target_from_secret(data, secret)

    def _target_from_secret(self, data: dict[str, Any], secret: str) -> UpstreamTarget:
        engine = data.get("engine")
        if engine is not None and engine not in _POSTGRES_ENGINES:
            raise UpstreamConfigurationError(
                f"{secret} is for engine {engine!r}, not PostgreSQL; point upstream.secret_id "
                "at a PostgreSQL database's secret"
            )
        port = data.get("port", 5432)
        if isinstance(port, str) and port.isascii() and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise UpstreamConfigurationError(
                f"{secret} has a 'port' that is not a number from 1 to 65535"
            )
        database = data.get("dbname", _RDS_DEFAULT_DATABASE)
        if not isinstance(database, str) or not database:
            raise UpstreamConfigurationError(f"{secret} has a 'dbname' that is not a text")
        return UpstreamTarget(
            host=_required_text(data, "host", secret),
            port=port,
            user=_required_text(data, "username", secret),
            password=_required_text(data, "password", secret),
            database=database,
            sslmode=self._settings.cloud_sslmode(),
            sslrootcert=_path_text(self._settings),
        )


class RdsIamCredentials(_RefreshingSource):
    """A short-lived IAM auth token as the password; the task role needs rds-db:connect."""

    def __init__(
        self,
        settings: UpstreamSettings,
        client_factory: ClientFactory | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if settings.rds_iam is None:
            raise UpstreamConfigurationError("RdsIamCredentials needs upstream.rds_iam to be set")
        super().__init__(IAM_TOKEN_REUSE_SECONDS, clock, client_factory or self._default_client)
        self._settings = settings
        self._iam: RdsIamSettings = settings.rds_iam

    def _default_client(self) -> Any:
        from boto3.session import Session

        return Session().client("rds", region_name=self._iam.region)

    def _fetch(self) -> UpstreamTarget:
        from botocore.exceptions import BotoCoreError, ClientError

        iam = self._iam
        try:
            # Signing happens locally; only finding the role's credentials may touch the network.
            token = self._aws_client().generate_db_auth_token(
                DBHostname=iam.host, Port=iam.port, DBUsername=iam.user, Region=iam.region
            )
        except (BotoCoreError, ClientError) as error:
            raise _aws_failure(
                error,
                doing=f"cannot create an RDS IAM auth token for {iam.user}@{iam.host}",
                grant=f"rds-db:connect for database user {iam.user}",
                service="AWS",
            ) from None
        return UpstreamTarget(
            host=iam.host,
            port=iam.port,
            user=iam.user,
            password=token,
            database=iam.dbname,
            sslmode=self._settings.cloud_sslmode(),
            sslrootcert=_path_text(self._settings),
        )


def credential_source(settings: UpstreamSettings) -> CredentialSource:
    """The source the settings ask for; DSN problems are reported here, at startup."""
    if settings.rds_iam is not None:
        return RdsIamCredentials(settings)
    if settings.secret_id is not None:
        return SecretsManagerCredentials(settings)
    return DsnCredentials(settings)


def _consume_outcome(task: asyncio.Task[UpstreamTarget]) -> None:
    if not task.cancelled():
        task.exception()


def _path_text(settings: UpstreamSettings) -> str | None:
    return None if settings.sslrootcert is None else str(settings.sslrootcert)


def _required_text(data: dict[str, Any], key: str, secret: str) -> str:
    value = data.get(key)
    if value is None:
        raise UpstreamConfigurationError(
            f"{secret} has no {key!r} field; add it (the RDS secret JSON holds host, port, "
            "username, password and dbname)"
        )
    if not isinstance(value, str) or not value:
        raise UpstreamConfigurationError(f"{secret} has a {key!r} that is not a non-empty text")
    return value


_ACCESS_DENIED = {"AccessDeniedException", "AccessDenied"}
_BAD_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "ExpiredTokenException",
}
_NOT_FOUND = {"ResourceNotFoundException"}
_REQUEST_REFUSED = {"InvalidRequestException", "InvalidParameterException", "ValidationException"}


def _aws_failure(error: BaseException, *, doing: str, grant: str, service: str) -> UpstreamError:
    """Turns a boto3 failure into an error that says what to fix; AWS's text is not kept."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ReadTimeoutError,
    )

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "UnknownError"))
        if code in _ACCESS_DENIED:
            return UpstreamConfigurationError(f"{doing}: {code}; grant {grant} to the task role")
        if code in _BAD_CREDENTIALS:
            return UpstreamConfigurationError(
                f"{doing}: {code}; the gateway's AWS credentials are invalid or expired, check "
                "the task role (or the AWS credentials) it runs with"
            )
        if code == "DecryptionFailure":
            return UpstreamConfigurationError(
                f"{doing}: {code}; grant kms:Decrypt on the secret's KMS key to the task role"
            )
        if code in _NOT_FOUND:
            return UpstreamConfigurationError(
                f"{doing}: {code}; check upstream.secret_id and the region it lives in"
            )
        if code in _REQUEST_REFUSED:
            return UpstreamConfigurationError(
                f"{doing}: {code}; check that it exists and is not scheduled for deletion"
            )
        return UpstreamUnavailable(f"{doing}: {code}; {service} refused for now, retry later")
    if isinstance(error, NoCredentialsError):
        return UpstreamConfigurationError(
            f"{doing}: no AWS credentials found; run the gateway with a task role "
            "(or set AWS credentials) that has " + grant
        )
    if isinstance(error, NoRegionError):
        return UpstreamConfigurationError(
            f"{doing}: no AWS region configured; set AWS_REGION (or AWS_DEFAULT_REGION) or use the "
            "secret's full ARN"
        )
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return UpstreamUnavailable(
            f"{doing}: {service} is unreachable ({type(error).__name__}); check the network "
            "path (VPC endpoint or NAT gateway) and retry"
        )
    return UpstreamUnavailable(f"{doing}: {type(error).__name__}; retry later")
