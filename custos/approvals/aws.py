"""Approvals on AWS: the approvals table, and the gateway's backend over it and the workflow.

A request lives as one item of the approvals table (DynamoDB), keyed by its id: the request
as JSON (`request`: as approvers see it, its statement and parameters masked, its binding
keyed, so the item holds no raw personal data), and beside it the attributes that
conditions and the `by_binding` index read: status, binding, created_at, expires_at,
group, mode, grant_used, grant_expires_at, decided_at, and a version that every write of
a vote bumps, so that two approvers voting at once cannot lose a vote. Status, decided_at
and grant_used are written on their own by conditional updates (withdraw, expire, redeem),
so on reading they override what the JSON says. Times are stored as fixed-width UTC text,
which orders and compares as the times do. The single use of approvers' tickets is the
table's too: an item `used#<nonce>` per ticket used.

The gateway (`AwsApprovals`) stores a request and starts the approvals state machine's
execution named after it; the workflow mails the approvers (lambdas/approvals_notify), the
callback (lambdas/approvals_callback) records their votes here, and the record step
(lambdas/approvals_record) makes an expiry durable. The gateway learns decisions by reading
the table: one poller per backend reads every request its sessions wait on at once.

boto3 is imported only when no client is given, at construction: never at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from custos.approvals.backend import ApprovalsUnavailable
from custos.approvals.models import ApprovalRequest, RequestStatus, utc_now
from custos.approvals.settings import ApprovalSettings

log = logging.getLogger("custos.approvals")

ID = "id"
REQUEST = "request"
STATUS = "status"
BINDING = "binding"
CREATED_AT = "created_at"
EXPIRES_AT = "expires_at"
GROUP = "group"
MODE = "mode"
GRANT_USED = "grant_used"
GRANT_EXPIRES_AT = "grant_expires_at"
DECIDED_AT = "decided_at"
VERSION = "version"
TASK_TOKEN = "task_token"  # noqa: S105 - the attribute's name; the notify step stores it
DELETE_AFTER = "delete_after"  # TTL: epoch seconds
BINDING_INDEX = "by_binding"  # binding -> created_at: the newest request for a statement
USED_TICKET_PREFIX = "used#"

KEPT_DAYS = 30
"""Days a request's item outlives its expiry and grant; the audit trail keeps the decision."""
EXPIRY_GRACE = timedelta(seconds=30)
"""How long past its expiry a request may still read pending before the gateway takes it as
expired: the workflow records an expiry within moments, unless it is broken."""
BATCH_GET_KEYS = 100  # BatchGetItem's limit per request

Item = dict[str, Any]  # an item in DynamoDB's JSON: {"id": {"S": "..."}}


def stored_time(moment: datetime) -> str:
    """UTC at a fixed width, so that stored times order and compare as the times do."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


# --- who approves: the approver directory of cdk.json, handed to the Lambdas ---------------


class EmailApprover(BaseModel):
    """An approver reached by email; `id` is who they are on links, votes and the audit
    trail (their subject at the organisation's IdP, where they have one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+:-]{0,127}$")
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)


APPROVERS = TypeAdapter(dict[str, tuple[EmailApprover, ...]])


def read_approvers(text: str) -> dict[str, tuple[EmailApprover, ...]]:
    """The approvers by group from their JSON ({group: [{"id", "email"}]}); ValueError
    naming what is wrong (never an address)."""
    try:
        return APPROVERS.validate_json(text)
    except ValidationError as error:
        where = sorted({".".join(map(str, problem["loc"])) for problem in error.errors()})
        raise ValueError(
            f"the approvers are not {{group: [{{id, email}}]}} JSON (at {where}); check the"
            " approvals.approvers context in cdk.json"
        ) from None


# --- the table --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRequest:
    request: ApprovalRequest
    version: int
    task_token: str | None


def request_item(request: ApprovalRequest) -> Item:
    grant = request.grant_seconds or 0
    delete_after = request.expires_at + timedelta(seconds=grant, days=KEPT_DAYS)
    item: Item = {
        ID: {"S": request.id},
        REQUEST: {"S": request.model_dump_json()},
        STATUS: {"S": request.status.value},
        BINDING: {"S": request.binding},
        CREATED_AT: {"S": stored_time(request.created_at)},
        EXPIRES_AT: {"S": stored_time(request.expires_at)},
        GROUP: {"S": request.group},
        MODE: {"S": request.mode},
        GRANT_USED: {"BOOL": request.grant_used},
        VERSION: {"N": "0"},
        DELETE_AFTER: {"N": str(int(delete_after.timestamp()))},
    }
    return item


def stored_request(item: Item) -> StoredRequest:
    request = ApprovalRequest.model_validate_json(item[REQUEST]["S"])
    decided_at = item.get(DECIDED_AT, {}).get("S")
    # The conditional updates write these alone; they are the truth over the JSON's.
    request = request.model_copy(
        update={
            "status": RequestStatus(item[STATUS]["S"]),
            "grant_used": item.get(GRANT_USED, {}).get("BOOL", False),
            "decided_at": read_time(decided_at) if decided_at else request.decided_at,
        }
    )
    token = item.get(TASK_TOKEN, {}).get("S")
    return StoredRequest(request, int(item.get(VERSION, {}).get("N", "0")), token)


def _failed_condition(error: ClientError) -> bool:
    code: object = error.response.get("Error", {}).get("Code")
    return code == "ConditionalCheckFailedException"


class ApprovalsTable:
    """The approvals table's reads and conditional writes, shared by the gateway and the
    Lambdas. Blocking (boto3): the gateway calls it from a thread."""

    def __init__(self, name: str, client: Any = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        self.name = name
        self._client = client

    def create(self, request: ApprovalRequest) -> None:
        try:
            with self._unavailable("store the request"):
                self._client.put_item(
                    TableName=self.name,
                    Item=request_item(request),
                    ConditionExpression="attribute_not_exists(#id)",
                    ExpressionAttributeNames={"#id": ID},
                )
        except _ConditionFailed:
            raise ApprovalsUnavailable(
                f"approval request {request.id} is in the approvals table already; a request"
                " is submitted once"
            ) from None

    def forget(self, request_id: str) -> None:
        """Deletes a pending request whose workflow never started: nobody heard of it."""
        with contextlib.suppress(_ConditionFailed), self._unavailable("remove the request"):
            self._client.delete_item(
                TableName=self.name,
                Key={ID: {"S": request_id}},
                ConditionExpression="#status = :pending",
                ExpressionAttributeNames={"#status": STATUS},
                ExpressionAttributeValues={":pending": {"S": RequestStatus.PENDING.value}},
            )

    def get(self, request_id: str) -> StoredRequest | None:
        with self._unavailable("read the request"):
            answer = self._client.get_item(
                TableName=self.name, Key={ID: {"S": request_id}}, ConsistentRead=True
            )
        item = answer.get("Item")
        return None if item is None else stored_request(item)

    def many(self, request_ids: Iterable[str]) -> dict[str, StoredRequest]:
        """The requests found of these ids (consistent reads); one not returned is either
        missing or left unprocessed this time."""
        wanted = sorted(set(request_ids))
        found: dict[str, StoredRequest] = {}
        for start in range(0, len(wanted), BATCH_GET_KEYS):
            chunk = wanted[start : start + BATCH_GET_KEYS]
            keys = [{ID: {"S": request_id}} for request_id in chunk]
            with self._unavailable("read the requests"):
                answer = self._client.batch_get_item(
                    RequestItems={self.name: {"Keys": keys, "ConsistentRead": True}}
                )
            for item in answer.get("Responses", {}).get(self.name, []):
                stored = stored_request(item)
                found[stored.request.id] = stored
        return found

    def newest(self, binding: str) -> ApprovalRequest | None:
        with self._unavailable("look up the statement's requests"):
            answer = self._client.query(
                TableName=self.name,
                IndexName=BINDING_INDEX,
                KeyConditionExpression="#binding = :binding",
                ExpressionAttributeNames={"#binding": BINDING},
                ExpressionAttributeValues={":binding": {"S": binding}},
                ScanIndexForward=False,
                Limit=1,
            )
        items = answer.get("Items", [])
        return stored_request(items[0]).request if items else None

    def end(self, request_id: str, status: RequestStatus, now: datetime) -> bool:
        """Ends a pending request (expired, withdrawn); false if it was not pending."""
        try:
            with self._unavailable(f"mark the request {status.value}"):
                self._client.update_item(
                    TableName=self.name,
                    Key={ID: {"S": request_id}},
                    UpdateExpression="SET #status = :status, #decided = :now ADD #version :one",
                    ConditionExpression="#status = :pending",
                    ExpressionAttributeNames={
                        "#status": STATUS,
                        "#decided": DECIDED_AT,
                        "#version": VERSION,
                    },
                    ExpressionAttributeValues={
                        ":status": {"S": status.value},
                        ":pending": {"S": RequestStatus.PENDING.value},
                        ":now": {"S": stored_time(now)},
                        ":one": {"N": "1"},
                    },
                )
        except _ConditionFailed:
            return False
        return True

    def write_vote(self, request: ApprovalRequest, version: int) -> bool:
        """Writes the request with a vote counted, if nothing changed it since `version` was
        read; false if something did (read it again and vote again)."""
        values: dict[str, Any] = {
            ":request": {"S": request.model_dump_json()},
            ":status": {"S": request.status.value},
            ":version": {"N": str(version)},
            ":next": {"N": str(version + 1)},
        }
        sets = ["#request = :request", "#status = :status", "#version = :next"]
        names = {"#request": REQUEST, "#status": STATUS, "#version": VERSION}
        if request.decided_at is not None:
            sets.append("#decided = :decided")
            names["#decided"] = DECIDED_AT
            values[":decided"] = {"S": stored_time(request.decided_at)}
        if request.grant_expires_at is not None:
            sets.append("#grant = :grant")
            names["#grant"] = GRANT_EXPIRES_AT
            values[":grant"] = {"S": stored_time(request.grant_expires_at)}
        try:
            with self._unavailable("record the vote"):
                self._client.update_item(
                    TableName=self.name,
                    Key={ID: {"S": request.id}},
                    UpdateExpression="SET " + ", ".join(sets),
                    ConditionExpression="#version = :version",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
        except _ConditionFailed:
            return False
        return True

    def redeem(self, request_id: str, now: datetime) -> bool:
        """Uses an approved retry's grant: true for exactly one caller while it lasts."""
        try:
            with self._unavailable("use the approval's grant"):
                self._client.update_item(
                    TableName=self.name,
                    Key={ID: {"S": request_id}},
                    UpdateExpression="SET #used = :true",
                    ConditionExpression=(
                        "#status = :approved AND #mode = :retry AND #used = :false"
                        " AND #grant > :now"
                    ),
                    ExpressionAttributeNames={
                        "#status": STATUS,
                        "#mode": MODE,
                        "#used": GRANT_USED,
                        "#grant": GRANT_EXPIRES_AT,
                    },
                    ExpressionAttributeValues={
                        ":approved": {"S": RequestStatus.APPROVED.value},
                        ":retry": {"S": "retry"},
                        ":true": {"BOOL": True},
                        ":false": {"BOOL": False},
                        ":now": {"S": stored_time(now)},
                    },
                )
        except _ConditionFailed:
            return False
        return True

    def store_token(self, request_id: str, token: str) -> bool:
        """Keeps the workflow's task token with its request, for the callback to answer;
        false if there is no such request."""
        try:
            with self._unavailable("keep the workflow's task token"):
                self._client.update_item(
                    TableName=self.name,
                    Key={ID: {"S": request_id}},
                    UpdateExpression="SET #token = :token",
                    ConditionExpression="attribute_exists(#id)",
                    ExpressionAttributeNames={"#token": TASK_TOKEN, "#id": ID},
                    ExpressionAttributeValues={":token": {"S": token}},
                )
        except _ConditionFailed:
            return False
        return True

    def use_ticket(self, nonce: str, expires_at: datetime) -> bool:
        """Records a ticket's nonce as used; false if it was used before."""
        try:
            with self._unavailable("record the link as used"):
                self._client.put_item(
                    TableName=self.name,
                    Item={
                        ID: {"S": USED_TICKET_PREFIX + nonce},
                        DELETE_AFTER: {"N": str(int(expires_at.timestamp()) + 86_400)},
                    },
                    ConditionExpression="attribute_not_exists(#id)",
                    ExpressionAttributeNames={"#id": ID},
                )
        except _ConditionFailed:
            return False
        return True

    @contextlib.contextmanager
    def _unavailable(self, doing: str) -> Iterator[None]:
        """A failed condition as _ConditionFailed; every other failure as
        ApprovalsUnavailable, naming the table and what to check."""
        try:
            yield
        except ClientError as error:
            if _failed_condition(error):
                raise _ConditionFailed from None
            details = error.response.get("Error", {})
            raise ApprovalsUnavailable(
                f"the approvals table {self.name} refused to {doing}"
                f" ({details.get('Code', 'unknown')}: {details.get('Message', '')});"
                " check that the table exists and this role may use it"
            ) from None
        except BotoCoreError as error:
            raise ApprovalsUnavailable(
                f"the approvals table {self.name} could not {doing} ({error}); check the"
                " network path to DynamoDB and the credentials"
            ) from None


class _ConditionFailed(Exception):
    """A conditional write found the item not as it required."""


# --- the gateway's backend --------------------------------------------------------------------


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN of the state machine's execution of this name."""
    parts = state_machine_arn.split(":")
    if len(parts) != 7 or parts[5] != "stateMachine":
        raise ValueError(f"{state_machine_arn!r} is not a state machine's ARN")
    return ":".join([*parts[:5], "execution", parts[6], name])


@dataclass
class _Awaited:
    futures: set[asyncio.Future[ApprovalRequest]] = field(default_factory=set)
    deadline: datetime | None = None  # expiry and grace: past it, nothing to wait for


class AwsApprovals:
    """The gateway's approvals on AWS (backend.ApprovalBackend)."""

    def __init__(
        self,
        settings: ApprovalSettings,
        *,
        dynamodb: Any = None,
        stepfunctions: Any = None,
        clock: Callable[[], datetime] = utc_now,
        expiry_grace: timedelta = EXPIRY_GRACE,
    ) -> None:
        if not (settings.state_machine_arn and settings.table and settings.url):
            raise ValueError("aws approvals need state_machine_arn, table and url")
        if stepfunctions is None:
            import boto3

            stepfunctions = boto3.client("stepfunctions")
        self.state_machine_arn = settings.state_machine_arn
        self.table = ApprovalsTable(settings.table, dynamodb)
        self._url = settings.url.rstrip("/")
        self._poll_seconds = settings.poll_seconds
        self._states = stepfunctions
        self._clock = clock
        self._grace = expiry_grace
        self._awaited: dict[str, _Awaited] = {}
        self._poller: asyncio.Task[None] | None = None
        self._table_failing = False

    def link(self, request_id: str) -> str:
        return f"{self._url}/requests/{request_id}"

    async def submit(self, request: ApprovalRequest) -> None:
        await asyncio.to_thread(self._submit, request)

    def _submit(self, request: ApprovalRequest) -> None:
        self.table.create(request)
        remaining = (request.expires_at - self._clock()).total_seconds()
        workflow_input = {"request_id": request.id, "timeout_seconds": max(1, math.ceil(remaining))}
        try:
            self._states.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=request.id,
                input=json.dumps(workflow_input),
            )
        except (ClientError, BotoCoreError) as error:
            with contextlib.suppress(ApprovalsUnavailable):
                self.table.forget(request.id)
            raise ApprovalsUnavailable(
                f"the approvals workflow {self.state_machine_arn} did not start ({error});"
                " check that it exists and the gateway's role may start it"
            ) from None

    async def decided(self, request_id: str) -> ApprovalRequest:
        future: asyncio.Future[ApprovalRequest] = asyncio.get_running_loop().create_future()
        awaited = self._awaited.setdefault(request_id, _Awaited())
        awaited.futures.add(future)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="custos-approvals-poller")
        try:
            return await future
        finally:
            awaited.futures.discard(future)
            if not awaited.futures and self._awaited.get(request_id) is awaited:
                del self._awaited[request_id]

    async def withdraw(self, request_id: str) -> None:
        await asyncio.to_thread(self._withdraw, request_id)

    def _withdraw(self, request_id: str) -> None:
        if not self.table.end(request_id, RequestStatus.WITHDRAWN, self._clock()):
            return  # decided already, or gone: its workflow ended or ends by itself
        try:
            self._states.stop_execution(
                executionArn=execution_arn(self.state_machine_arn, request_id),
                cause="withdrawn by the requester",
            )
        except (ClientError, BotoCoreError) as error:
            # The table says withdrawn, so no vote counts; the workflow ends at its timeout.
            log.warning("approval %s: its workflow could not be stopped: %s", request_id, error)

    async def latest(self, binding: str) -> ApprovalRequest | None:
        return await asyncio.to_thread(self.table.newest, binding)

    async def redeem(self, request_id: str) -> bool:
        return await asyncio.to_thread(self.table.redeem, request_id, self._clock())

    # --- the poller ---------------------------------------------------------------------------

    async def _poll(self) -> None:
        """Reads every awaited request at once, every poll_seconds, while any is awaited."""
        while self._awaited:
            awaited = dict(self._awaited)
            try:
                found = await asyncio.to_thread(self.table.many, awaited)
            except ApprovalsUnavailable as error:
                self._unreadable(awaited, error)
            except Exception:
                # An item this gateway cannot read: its waiters fail closed now, and the
                # poller lives on for those that come after.
                log.exception("approvals: the awaited requests could not be read")
                unreadable = ApprovalsUnavailable(
                    f"the approvals table {self.table.name} holds a request this gateway"
                    " cannot read; the gateway's log says why"
                )
                for waiting in awaited.values():
                    _fail(waiting, unreadable)
            else:
                if self._table_failing:
                    log.info("approvals table readable again")
                    self._table_failing = False
                self._settle(awaited, found)
            await asyncio.sleep(self._poll_seconds)

    def _settle(self, awaited: Mapping[str, _Awaited], found: Mapping[str, StoredRequest]) -> None:
        now = self._clock()
        for request_id, waiting in awaited.items():
            stored = found.get(request_id)
            if stored is None:
                # Missing, or unprocessed this time: wait, but not forever.
                waiting.deadline = waiting.deadline or now + self._grace
                if now >= waiting.deadline:
                    missing = ApprovalsUnavailable(
                        f"approval request {request_id} is not in the approvals table"
                        f" {self.table.name}; it cannot be decided"
                    )
                    _fail(waiting, missing)
                continue
            request = stored.request
            waiting.deadline = request.expires_at + self._grace
            if not request.pending:
                _answer(waiting, request)
            elif now >= waiting.deadline:
                # The workflow should have recorded the expiry by now: fail closed.
                log.warning("approval %s pending past its expiry: taken as expired", request_id)
                _answer(waiting, request.ended(RequestStatus.EXPIRED, now))

    def _unreadable(self, awaited: Mapping[str, _Awaited], error: ApprovalsUnavailable) -> None:
        if not self._table_failing:
            log.error("approvals table unreadable, retrying until the requests expire: %s", error)
            self._table_failing = True
        now = self._clock()
        for waiting in awaited.values():
            waiting.deadline = waiting.deadline or now + self._grace
            if now >= waiting.deadline:
                _fail(waiting, error)


def _answer(waiting: _Awaited, request: ApprovalRequest) -> None:
    for future in waiting.futures:
        if not future.done():
            future.set_result(request)


def _fail(waiting: _Awaited, error: Exception) -> None:
    for future in waiting.futures:
        if not future.done():
            future.set_exception(error)
