"""Upstream credential sources: DSN parsing, Secrets Manager and RDS IAM (through moto)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from moto import mock_aws
from pydantic import ValidationError

from custos.upstream import (
    DsnCredentials,
    RdsIamCredentials,
    SecretsManagerCredentials,
    UpstreamConfigurationError,
    UpstreamError,
    UpstreamSettings,
    UpstreamTarget,
    UpstreamUnavailable,
    credential_source,
)

REGION = "eu-west-1"
SECRET = "SECRETPW"
RDS_HOST = "app.cluster-abc123.eu-west-1.rds.amazonaws.com"


@pytest.fixture(autouse=True)
def _isolated_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials, region or config from the machine running the tests."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "BOTO_CONFIG"):
        monkeypatch.setenv(name, str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # boto3's default session caches the credentials it found first.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_REGION", REGION)
    with mock_aws():
        yield


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _secrets() -> Any:
    return boto3.client("secretsmanager", region_name=REGION)


def _store(secret: dict[str, Any] | str, name: str = "custos/upstream") -> str:
    text = secret if isinstance(secret, str) else json.dumps(secret)
    return str(_secrets().create_secret(Name=name, SecretString=text)["ARN"])


def _rotate(arn: str) -> None:
    rotated = json.dumps({**GOOD_SECRET, "password": "rotated"})
    _secrets().put_secret_value(SecretId=arn, SecretString=rotated)


def _resolve(source: Any) -> UpstreamTarget:
    target = asyncio.run(source.resolve())
    assert isinstance(target, UpstreamTarget)
    return target


def _config_error(source: Any) -> str:
    with pytest.raises(UpstreamConfigurationError) as caught:
        asyncio.run(source.resolve())
    return str(caught.value)


GOOD_SECRET = {
    "engine": "postgres",
    "host": "db.internal",
    "port": 5433,
    "username": "gateway",
    "password": SECRET,
    "dbname": "app",
    "dbInstanceIdentifier": "app-db",
}


# Settings


@pytest.mark.parametrize(
    ("fields", "found"),
    [
        ({}, "found none"),
        (
            {"dsn": f"host=db user=gw password={SECRET}", "secret_id": "s"},
            "found dsn and secret_id",
        ),
        (
            {
                "dsn": "host=db user=gw",
                "secret_id": "s",
                "rds_iam": {"host": "h", "user": "u", "dbname": "d", "region": REGION},
            },
            "found dsn and secret_id and rds_iam",
        ),
    ],
)
def test_exactly_one_source_must_be_set(fields: dict[str, Any], found: str) -> None:
    with pytest.raises(ValidationError) as caught:
        UpstreamSettings.model_validate(fields)
    message = str(caught.value)
    assert "set exactly one of upstream.dsn" in message
    assert found in message
    assert SECRET not in message


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        UpstreamSettings.model_validate({"secret_id": "s", "pasword": SECRET})


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer"])
def test_rds_iam_needs_tls(sslmode: str) -> None:
    rds_iam = {"host": RDS_HOST, "user": "gw", "dbname": "app", "region": REGION}
    with pytest.raises(ValidationError, match="accepts IAM auth tokens only over TLS"):
        UpstreamSettings.model_validate({"rds_iam": rds_iam, "sslmode": sslmode})


@pytest.mark.parametrize(
    ("fields", "sslmode"),
    [
        ({}, "require"),
        ({"sslrootcert": "/etc/ssl/rds-ca.pem"}, "verify-full"),
        ({"sslrootcert": "/etc/ssl/rds-ca.pem", "sslmode": "verify-ca"}, "verify-ca"),
        ({"sslmode": "disable"}, "disable"),
    ],
)
def test_aws_sources_default_to_tls(fields: dict[str, Any], sslmode: str) -> None:
    assert UpstreamSettings.model_validate({"secret_id": "s", **fields}).cloud_sslmode() == sslmode


def test_settings_repr_hides_the_dsn_password() -> None:
    settings = UpstreamSettings(dsn=f"host=db user=gw password={SECRET}")  # type: ignore[arg-type]
    assert SECRET not in repr(settings)


# DSN


def _dsn(dsn: str, **settings: Any) -> UpstreamTarget:
    return _resolve(DsnCredentials(UpstreamSettings.model_validate({"dsn": dsn, **settings})))


def test_uri_dsn() -> None:
    target = _dsn(f"postgresql://gw:{SECRET}@db.internal:5433/app?sslmode=verify-full")
    assert target == UpstreamTarget(
        host="db.internal",
        port=5433,
        user="gw",
        password=SECRET,
        database="app",
        sslmode="verify-full",
        sslrootcert=None,
        options={},
    )


def test_key_value_dsn_with_quoting() -> None:
    target = _dsn(r"host=db user=gw password='it\'s a pass' dbname=app sslrootcert=/ca.pem")
    assert (target.host, target.user, target.password) == ("db", "gw", "it's a pass")
    assert (target.database, target.sslrootcert) == ("app", "/ca.pem")


def test_percent_encoded_password() -> None:
    target = _dsn("postgresql://gw:p%40ss%3Aw%2Ford%20%25@db/app")
    assert target.password == "p@ss:w/ord %"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://%2Fvar%2Frun%2Fpostgresql/app?user=gw",
        "postgresql:///app?host=/var/run/postgresql&user=gw",
        "host=/var/run/postgresql dbname=app user=gw",
    ],
)
def test_unix_socket_host(dsn: str) -> None:
    target = _dsn(dsn)
    assert target.host == "/var/run/postgresql"
    assert target.unix_socket_path == "/var/run/postgresql/.s.PGSQL.5432"
    assert target.database == "app"


def test_libpq_defaults() -> None:
    target = _dsn("host=db.internal user=gw")
    assert (target.port, target.database, target.sslmode) == (5432, "gw", "prefer")
    assert target.password is None
    assert target.sslrootcert is None
    assert target.unix_socket_path is None
    assert dict(target.options) == {}


def test_settings_tls_overrides_the_dsn() -> None:
    target = _dsn(
        "host=db user=gw sslmode=disable sslrootcert=/dsn-ca.pem",
        sslmode="verify-full",
        sslrootcert="/settings-ca.pem",
    )
    assert (target.sslmode, target.sslrootcert) == ("verify-full", "/settings-ca.pem")


def test_startup_parameters_are_kept() -> None:
    target = _dsn(
        "host=db user=gw options='-c search_path=app' application_name=custos "
        "fallback_application_name=ignored client_encoding=UTF8"
    )
    assert dict(target.options) == {
        "options": "-c search_path=app",
        "application_name": "custos",
        "client_encoding": "UTF8",
    }


def test_fallback_application_name_applies_when_no_application_name() -> None:
    target = _dsn("host=db user=gw fallback_application_name=custos")
    assert dict(target.options) == {"application_name": "custos"}


def test_sslrootcert_system_means_the_system_store() -> None:
    target = _dsn("host=db user=gw sslrootcert=system sslmode=verify-full")
    assert (target.sslmode, target.sslrootcert) == ("verify-full", None)


def test_parameters_at_their_libpq_default_are_accepted() -> None:
    target = _dsn(
        "host=db user=gw channel_binding=prefer gssencmode=disable sslsni=1 "
        "target_session_attrs=any sslnegotiation=postgres load_balance_hosts=disable"
    )
    assert target.host == "db"


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        (f"postgresql://gw:{SECRET}@h1,h2/app", "names several hosts"),
        (f"host=h1,h2 user=gw password={SECRET}", "names several hosts"),
        (f"host=db port=5432,5433 user=gw password={SECRET}", "names several hosts"),
        (f"user=gw password={SECRET}", "names no host"),
        (f"host=db password={SECRET}", "names no user"),
        (f"host=@abstract user=gw password={SECRET}", "abstract Unix socket"),
        (f"host=db user=gw password={SECRET} port=0", "port that is not a number"),
        (f"host=db user=gw password={SECRET} port=70000", "port that is not a number"),
        (f"host=db user=gw password={SECRET} port=five", "port that is not a number"),
        (f"host=db user=gw password={SECRET} sslmode=sometimes", "unknown sslmode"),
        (f"host=db user=gw password={SECRET} sslrootcert=system", "needs sslmode=verify-full"),
        (f"host=db user=gw password={SECRET} sslcert=/c.pem", "client certificates are not"),
        (f"host=db user=gw password={SECRET} sslkey=/k.pem", "client certificates are not"),
        (f"host=db user=gw password={SECRET} hostaddr=10.0.0.1", "put the address in host"),
        (f"host=db user=gw password={SECRET} connect_timeout=5", "connect_timeout_seconds"),
        ("host=db user=gw passfile=/pgpass", "password files are not read"),
        (f"service=prod password={SECRET}", "service files are not read"),
        (f"host=db user=gw password={SECRET} krbsrvname=pg", "GSSAPI authentication is not"),
        (f"host=db user=gw password={SECRET} replication=database", "ordinary sessions only"),
        (f"host=db user=gw password={SECRET} keepalives=0", "does not support it yet"),
        (f"host=db user=gw password={SECRET} channel_binding=require", "accepts only prefer"),
        (f"host=db user=gw password={SECRET} gssencmode=require", "accepts only prefer or dis"),
        (f"host=db user=gw password={SECRET} target_session_attrs=read-write", "only any"),
    ],
)
def test_invalid_dsns_say_what_to_change_without_the_password(dsn: str, says: str) -> None:
    settings = UpstreamSettings.model_validate({"dsn": dsn})
    with pytest.raises(UpstreamConfigurationError) as caught:
        credential_source(settings)
    message = str(caught.value)
    assert says in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        ("host=db user=gw password=swordfish hunter2", "hunter2"),
        ("postgresql://gw:%zzhunter2@db/app", "hunter2"),
        ("host=db user=gw hunter2=x", "hunter2"),
        ("host=db user=gw password='hunter2", "hunter2"),
    ],
)
def test_unparsable_dsns_withhold_the_parser_detail(dsn: str, fragment: str) -> None:
    with pytest.raises(UpstreamConfigurationError) as caught:
        credential_source(UpstreamSettings.model_validate({"dsn": dsn}))
    assert "not a valid libpq connection string" in str(caught.value)
    assert fragment not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_target_repr_never_shows_the_password() -> None:
    target = _dsn(f"postgresql://gw:{SECRET}@db/app")
    assert target.password == SECRET
    assert SECRET not in repr(target)
    assert SECRET not in str(target)


def test_target_options_cannot_change_behind_its_back() -> None:
    options = {"application_name": "custos"}
    target = UpstreamTarget("db", 5432, "gw", None, "app", "prefer", None, options)
    options["application_name"] = "changed"
    assert target.options["application_name"] == "custos"
    with pytest.raises(TypeError):
        target.options["application_name"] = "changed"  # type: ignore[index]


def test_dsn_source_resolves_the_same_target_and_ignores_invalidate() -> None:
    source = credential_source(UpstreamSettings.model_validate({"dsn": "host=db user=gw"}))
    assert isinstance(source, DsnCredentials)
    first = _resolve(source)
    source.invalidate()
    assert _resolve(source) is first


@pytest.mark.parametrize(
    "source_type", [DsnCredentials, SecretsManagerCredentials, RdsIamCredentials]
)
def test_a_source_refuses_settings_for_another_source(source_type: Any) -> None:
    settings = UpstreamSettings.model_validate(
        {"rds_iam": {"host": RDS_HOST, "user": "gw", "dbname": "app", "region": REGION}}
        if source_type is not RdsIamCredentials
        else {"secret_id": "s"}
    )
    with pytest.raises(UpstreamConfigurationError, match="needs upstream"):
        source_type(settings)


def test_importing_the_package_does_not_load_boto3() -> None:
    code = "import sys, custos.upstream; sys.exit('boto3' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


# Secrets Manager


def _secrets_source(secret_id: str, **settings: Any) -> SecretsManagerCredentials:
    source = credential_source(
        UpstreamSettings.model_validate({"secret_id": secret_id, **settings})
    )
    assert isinstance(source, SecretsManagerCredentials)
    return source


def test_secret_in_the_rds_shape(aws: None) -> None:
    target = _resolve(_secrets_source(_store(GOOD_SECRET)))
    assert target == UpstreamTarget(
        host="db.internal",
        port=5433,
        user="gateway",
        password=SECRET,
        database="app",
        sslmode="require",
        sslrootcert=None,
    )
    assert SECRET not in repr(target)


def test_secret_by_name_with_ca_bundle(aws: None) -> None:
    _store(GOOD_SECRET, name="custos/by-name")
    target = _resolve(_secrets_source("custos/by-name", sslrootcert="/etc/ssl/rds-ca.pem"))
    assert (target.sslmode, target.sslrootcert) == ("verify-full", "/etc/ssl/rds-ca.pem")


def test_secret_defaults_port_and_database_as_rds_does(aws: None) -> None:
    secret = {"engine": "aurora-postgresql", "host": "db", "username": "gw", "password": SECRET}
    target = _resolve(_secrets_source(_store(secret)))
    assert (target.port, target.database) == (5432, "postgres")


def test_secret_port_may_be_text(aws: None) -> None:
    assert _resolve(_secrets_source(_store({**GOOD_SECRET, "port": "6543"}))).port == 6543


@pytest.mark.parametrize("field", ["host", "username", "password"])
def test_secret_missing_a_field(aws: None, field: str) -> None:
    secret = {key: value for key, value in GOOD_SECRET.items() if key != field}
    arn = _store(secret)
    message = _config_error(_secrets_source(arn))
    assert f"secret {arn} has no '{field}' field" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"password": ""}, "'password' that is not a non-empty text"),
        ({"password": 12345}, "'password' that is not a non-empty text"),
        ({"host": ["db"]}, "'host' that is not a non-empty text"),
        ({"port": "five"}, "'port' that is not a number"),
        ({"port": 0}, "'port' that is not a number"),
        ({"port": True}, "'port' that is not a number"),
        ({"dbname": 5}, "'dbname' that is not a text"),
        ({"engine": "mysql"}, "is for engine 'mysql', not PostgreSQL"),
    ],
)
def test_secret_with_a_bad_field(aws: None, change: dict[str, Any], says: str) -> None:
    message = _config_error(_secrets_source(_store({**GOOD_SECRET, **change})))
    assert says in message
    assert SECRET not in message


@pytest.mark.parametrize("text", [f"password={SECRET}", json.dumps([SECRET]), "null"])
def test_secret_that_is_not_a_json_object(aws: None, text: str) -> None:
    message = _config_error(_secrets_source(_store(text)))
    assert "is not a JSON object" in message
    assert SECRET not in message


def test_binary_secret(aws: None) -> None:
    arn = _secrets().create_secret(Name="binary", SecretBinary=b"\x00\x01")["ARN"]
    assert "holds binary data" in _config_error(_secrets_source(arn))


def test_missing_secret(aws: None) -> None:
    message = _config_error(_secrets_source("custos/nowhere"))
    assert "cannot read secret custos/nowhere: ResourceNotFoundException" in message


def test_secret_scheduled_for_deletion(aws: None) -> None:
    arn = _store(GOOD_SECRET)
    _secrets().delete_secret(SecretId=arn, RecoveryWindowInDays=7)
    assert "scheduled for deletion" in _config_error(_secrets_source(arn))


def test_secret_is_cached_until_invalidated(aws: None) -> None:
    arn = _store(GOOD_SECRET)
    source = _secrets_source(arn)
    first = _resolve(source)
    _secrets().put_secret_value(
        SecretId=arn, SecretString=json.dumps({**GOOD_SECRET, "password": "rotated"})
    )
    assert _resolve(source) is first
    source.invalidate()
    assert _resolve(source).password == "rotated"


def test_secret_is_refetched_after_its_ttl(aws: None) -> None:
    arn = _store(GOOD_SECRET)
    clock = FakeClock()
    settings = UpstreamSettings(secret_id=arn, secret_ttl_seconds=300)
    source = SecretsManagerCredentials(settings, clock=clock)
    first = _resolve(source)
    _secrets().put_secret_value(
        SecretId=arn, SecretString=json.dumps({**GOOD_SECRET, "password": "rotated"})
    )
    clock.now += 299
    assert _resolve(source) is first
    clock.now += 1
    assert _resolve(source).password == "rotated"


def test_a_zero_ttl_fetches_every_time(aws: None) -> None:
    source = _secrets_source(_store(GOOD_SECRET), secret_ttl_seconds=0)
    assert _resolve(source) is not _resolve(source)


def test_concurrent_resolves_share_one_fetch(aws: None) -> None:
    source = _secrets_source(_store(GOOD_SECRET))

    async def resolve_many() -> list[UpstreamTarget]:
        return await asyncio.gather(*(source.resolve() for _ in range(20)))

    targets = asyncio.run(resolve_many())
    assert all(target is targets[0] for target in targets)


def test_concurrent_resolves_share_one_failure(aws: None) -> None:
    source = _secrets_source("custos/nowhere")

    async def resolve_many() -> list[BaseException | UpstreamTarget]:
        return await asyncio.gather(*(source.resolve() for _ in range(5)), return_exceptions=True)

    outcomes = asyncio.run(resolve_many())
    assert isinstance(outcomes[0], UpstreamConfigurationError)
    assert all(outcome is outcomes[0] for outcome in outcomes)


def test_a_waiter_that_gives_up_does_not_cancel_the_others_fetch(aws: None) -> None:
    source = _secrets_source(_store(GOOD_SECRET))

    async def scenario() -> UpstreamTarget:
        leaving = asyncio.create_task(source.resolve())
        staying = asyncio.create_task(source.resolve())
        await asyncio.sleep(0)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        return await staying

    assert asyncio.run(scenario()).password == SECRET


def test_full_arn_names_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        arn = _store(GOOD_SECRET)
        monkeypatch.delenv("AWS_REGION", raising=False)
        assert _resolve(_secrets_source(arn)).host == "db.internal"


def test_a_bare_name_without_a_region(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        message = _config_error(_secrets_source("custos/upstream"))
    assert "no AWS region configured; set AWS_REGION" in message


def test_no_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", REGION)
    message = _config_error(_secrets_source("custos/upstream"))
    assert "no AWS credentials found" in message
    assert "secretsmanager:GetSecretValue" in message


@pytest.mark.parametrize(
    ("code", "error_type", "says"),
    [
        (
            "AccessDeniedException",
            UpstreamConfigurationError,
            "cannot read secret custos/upstream: AccessDeniedException; grant "
            "secretsmanager:GetSecretValue on it to the task role",
        ),
        ("DecryptionFailure", UpstreamConfigurationError, "kms:Decrypt"),
        ("UnrecognizedClientException", UpstreamConfigurationError, "invalid or expired"),
        ("ThrottlingException", UpstreamUnavailable, "retry later"),
        ("InternalServiceError", UpstreamUnavailable, "retry later"),
    ],
)
def test_aws_refusals_say_what_to_do(
    aws: None, code: str, error_type: type[UpstreamError], says: str
) -> None:
    client = _secrets()
    stubber = Stubber(client)
    stubber.add_client_error("get_secret_value", service_error_code=code, http_status_code=400)
    stubber.activate()
    source = SecretsManagerCredentials(
        UpstreamSettings(secret_id="custos/upstream"), client_factory=lambda: client
    )
    with pytest.raises(error_type) as caught:
        asyncio.run(source.resolve())
    assert says in str(caught.value)


def test_unreachable_secrets_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    def client() -> Any:
        return boto3.client(
            "secretsmanager",
            region_name=REGION,
            endpoint_url=f"http://127.0.0.1:{closed_port}",
            config=Config(retries={"total_max_attempts": 1}),
        )

    source = SecretsManagerCredentials(
        UpstreamSettings(secret_id="custos/upstream"), client_factory=client
    )
    with pytest.raises(UpstreamUnavailable, match="Secrets Manager is unreachable"):
        asyncio.run(source.resolve())


# RDS IAM


def _iam_settings(**fields: Any) -> UpstreamSettings:
    rds_iam = {"host": RDS_HOST, "user": "gateway", "dbname": "app", "region": REGION}
    return UpstreamSettings.model_validate({"rds_iam": rds_iam, **fields})


def test_rds_iam_token_is_the_password(aws: None) -> None:
    source = credential_source(_iam_settings())
    assert isinstance(source, RdsIamCredentials)
    target = _resolve(source)
    assert (target.host, target.port, target.user, target.database) == (
        RDS_HOST,
        5432,
        "gateway",
        "app",
    )
    assert (target.sslmode, target.sslrootcert) == ("require", None)
    assert target.password is not None
    assert target.password.startswith(f"{RDS_HOST}:5432/?")
    assert "Action=connect" in target.password
    assert "DBUser=gateway" in target.password
    assert f"%2F{REGION}%2Frds-db%2F" in target.password
    assert target.password not in repr(target)


def test_rds_iam_with_ca_bundle_verifies_the_host(aws: None) -> None:
    target = _resolve(credential_source(_iam_settings(sslrootcert="/etc/ssl/rds-ca.pem")))
    assert (target.sslmode, target.sslrootcert) == ("verify-full", "/etc/ssl/rds-ca.pem")


def test_rds_iam_token_is_reused_for_ten_minutes(aws: None) -> None:
    clock = FakeClock()
    source = RdsIamCredentials(_iam_settings(), clock=clock)
    first = _resolve(source)
    clock.now += 599
    assert _resolve(source) is first
    clock.now += 1
    second = _resolve(source)
    assert second is not first
    source.invalidate()
    assert _resolve(source) is not second


def test_rds_iam_without_credentials() -> None:
    message = _config_error(credential_source(_iam_settings()))
    assert "cannot create an RDS IAM auth token for gateway@" in message
    assert "no AWS credentials found" in message
    assert "rds-db:connect" in message
