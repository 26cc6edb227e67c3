"""Where the policy in force comes from: a file or a versioned S3 object, reloaded safely.

A source loads its policy when it is built and raises if that fails: the gateway does
not start without a valid policy. Afterwards a broken new version is logged and ignored;
the last good policy stays in force until a good one replaces it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from custos.policy.engine import PolicyEngine
from custos.policy.models import PolicyDocument

logger = logging.getLogger("custos.policy")

_MAX_POLICY_BYTES = 4 << 20


class PolicyError(Exception):
    """A policy cannot be used; ``problems`` says where and why, one line each."""

    def __init__(self, origin: str, problems: Sequence[str]) -> None:
        self.origin = origin
        self.problems = tuple(problems)
        super().__init__(f"invalid policy {origin}: {'; '.join(self.problems)}")


class PolicySource(Protocol):
    def current(self) -> PolicyEngine: ...


def load_policy(source: Path | str, *, origin: str | None = None) -> PolicyDocument:
    """Reads and validates a policy: ``source`` is a file path (Path) or YAML text (str).

    Errors name the file (or ``origin``) and the place in the document, e.g.
    ``rules[3].match.kinds[0]: 'selec' is not a statement kind; use one of ...``.
    """
    if isinstance(source, Path):
        origin = origin or str(source)
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as error:
            raise PolicyError(origin, [f"cannot read the file: {error.strerror}"]) from None
        except UnicodeDecodeError:
            raise PolicyError(origin, ["the file is not UTF-8 text"]) from None
    else:
        text = source
        origin = origin or "(policy text)"
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise PolicyError(origin, [_yaml_problem(error)]) from None
    if data is None:
        raise PolicyError(origin, ["the document is empty; it needs at least rules: [...]"])
    if not isinstance(data, dict):
        raise PolicyError(origin, ["the document must be a mapping (roles:, catalog:, rules:)"])
    try:
        return PolicyDocument.model_validate(data)
    except ValidationError as error:
        raise PolicyError(origin, _validation_problems(error, data)) from None


class _ReloadingSource:
    """The engine in force, replaced whole when a new valid version arrives."""

    _poll_seconds: float

    def __init__(self, engine: PolicyEngine, location: str) -> None:
        self._engine = engine
        self._location = location
        self._problem: str | None = None
        # Told each new version installed (the audit trail records it).
        self.on_loaded: Callable[[str], None] | None = None

    def current(self) -> PolicyEngine:
        return self._engine

    def check(self) -> bool:
        """Reloads if the source changed; True when a new policy version is now in force."""
        raise NotImplementedError

    async def watch(self) -> None:
        """Polls for changes forever; the gateway runs this as a task."""
        await _watch(self.check, self._poll_seconds, self._location)

    def _install(self, engine: PolicyEngine) -> bool:
        self._problem = None
        old = self._engine
        if engine.version == old.version:
            logger.debug(
                "policy %s changed but its version %s is the same", self._location, old.version[:12]
            )
            return False
        # One attribute store: a decision in flight keeps the engine it started with.
        self._engine = engine
        logger.info(
            "policy %s -> %s loaded from %s", old.version[:12], engine.version[:12], self._location
        )
        if self.on_loaded is not None:
            self.on_loaded(engine.version)
        return True

    def _report(self, problem: str) -> None:
        # Once per distinct problem: a broken file polled every two seconds is one event.
        if problem != self._problem:
            self._problem = problem
            logger.error("%s", problem)


class FilePolicySource(_ReloadingSource):
    """The policy in a local file, reloaded when the file changes."""

    def __init__(self, path: Path | str, poll_seconds: float = 2.0) -> None:
        self.path = Path(path)
        self._poll_seconds = poll_seconds
        try:
            self._stamp = _stamp(self.path)
        except OSError as error:
            raise PolicyError(str(self.path), [f"cannot read the file: {error.strerror}"]) from None
        super().__init__(PolicyEngine(load_policy(self.path)), str(self.path))

    def check(self) -> bool:
        """Reloads if the file changed; True when a new policy version is now in force."""
        try:
            stamp = _stamp(self.path)
        except OSError as error:
            self._report(f"cannot read policy file {self.path}: {error.strerror}")
            return False
        if stamp == self._stamp:
            return False
        # Taken before reading: a write racing with the read changes the stamp again,
        # so the next check reads the file once more.
        self._stamp = stamp
        try:
            document = load_policy(self.path)
        except PolicyError as error:
            self._report(
                f"policy file {self.path} rejected (content sha256 {_digest(self.path)}): "
                f"{'; '.join(error.problems)}; policy {self._engine.version[:12]} stays in force"
            )
            return False
        return self._install(PolicyEngine(document))


class S3PolicySource(_ReloadingSource):
    """The policy in an S3 object (versioning enabled), reloaded when its version changes."""

    def __init__(
        self,
        bucket: str,
        key: str,
        client_factory: Callable[[], Any] | None = None,
        poll_seconds: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.location = f"s3://{bucket}/{key}"
        self._poll_seconds = poll_seconds
        self._client = (client_factory or _default_s3_client)()
        try:
            self._marker, text = self._fetch(None)
        except _S3Unavailable as error:
            raise PolicyError(self.location, [str(error)]) from None
        super().__init__(PolicyEngine(load_policy(text, origin=self.location)), self.location)

    def check(self) -> bool:
        """Reloads if the object changed; True when a new policy version is now in force."""
        failures: tuple[type[Exception], ...] = (_S3Unavailable, *_boto_errors())
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.key)
            marker = _marker(head)
            if marker == self._marker:
                return False
            marker, text = self._fetch(marker[0])
        except failures as error:
            self._report(f"cannot read policy {self.location}: {error}")
            return False
        self._marker = marker
        try:
            document = load_policy(text, origin=self.location)
        except PolicyError as error:
            self._report(
                f"policy {self.location} rejected (object version {marker[0]}, "
                f"etag {marker[1]}): {'; '.join(error.problems)}; "
                f"policy {self._engine.version[:12]} stays in force"
            )
            return False
        return self._install(PolicyEngine(document))

    def _fetch(self, version_id: str | None) -> tuple[tuple[str | None, str | None], str]:
        arguments = {"Bucket": self.bucket, "Key": self.key}
        # "null" is the version of an object written before versioning was enabled.
        if version_id is not None and version_id != "null":
            arguments["VersionId"] = version_id
        try:
            response = self._client.get_object(**arguments)
            body = response["Body"].read(_MAX_POLICY_BYTES + 1)
        except _boto_errors() as error:
            raise _S3Unavailable(f"cannot read the object: {error}") from None
        if len(body) > _MAX_POLICY_BYTES:
            raise _S3Unavailable(f"the object is larger than {_MAX_POLICY_BYTES} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _S3Unavailable("the object is not UTF-8 text") from None
        return _marker(response), text


class _S3Unavailable(Exception):
    pass


async def _watch(check: Callable[[], bool], poll_seconds: float, location: str) -> None:
    while True:
        await asyncio.sleep(poll_seconds)
        try:
            await asyncio.to_thread(check)
        except Exception:
            # The watcher must outlive any one failure, or the policy silently freezes.
            logger.exception("checking policy %s for changes failed; will retry", location)


def _stamp(path: Path) -> tuple[int, int, int, int]:
    status = os.stat(path)
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "unreadable"


def _marker(response: dict[str, Any]) -> tuple[str | None, str | None]:
    return response.get("VersionId"), response.get("ETag")


def _default_s3_client() -> Any:
    import boto3

    return boto3.client("s3")


def _boto_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


# --- YAML that refuses duplicate keys -----------------------------------------------------


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """Safe YAML that refuses a key given twice in one mapping.

    PyYAML silently keeps the last of two equal keys: a rule with two ``match:`` keys
    would lose its first conditions, and a lost condition widens what a rule allows.
    """


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"the key {key!r} appears twice; keep one",
                key_node.start_mark,
            )
        if isinstance(key, str | int | float | bool):
            seen.add(key)
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _mapping_without_duplicates,
)


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    return f"not valid YAML: {error}"


def _validation_problems(error: ValidationError, data: dict[str, Any]) -> list[str]:
    problems = []
    for item in error.errors():
        location = _location(item["loc"])
        if item["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against `custos policy schema`"
        else:
            message = item["msg"].removeprefix("Value error, ")
        rule = _rule_id(item["loc"], data)
        if rule:
            message += f" (in rule '{rule}')"
        problems.append(f"{location}: {message}" if location else message)
    return problems


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            continue
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f'["{part}"]'
    return text


def _rule_id(loc: tuple[int | str, ...], data: dict[str, Any]) -> str | None:
    """The id of the rule an error is in, when the document gives one."""
    if len(loc) < 2 or loc[0] != "rules" or not isinstance(loc[1], int) or loc[2:3] == ("id",):
        return None
    rules = data.get("rules")
    if not isinstance(rules, list) or loc[1] >= len(rules) or not isinstance(rules[loc[1]], dict):
        return None
    rule_id = rules[loc[1]].get("id")
    return rule_id if isinstance(rule_id, str) else None
