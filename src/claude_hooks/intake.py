"""Webhook intake: verify, record, run the flow, apply its decision, answer Forgejo.

A 2xx answer means the delivery and every task it created are committed. Agent work happens
after the answer; the only waits before it are the database and, for a sender not seen in a
while, one permission look-up on the forge.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from claude_hooks import flows
from claude_hooks.config import Config
from claude_hooks.errors import ClaudeHooksError, ConflictError, NotFoundError
from claude_hooks.events import Event
from claude_hooks.forge import Forge
from claude_hooks.forgejo.binding import check_event_type
from claude_hooks.forgejo.client import ForgejoError
from claude_hooks.forgejo.payloads import Payload, parse_payload
from claude_hooks.forgejo.webhook import WebhookError, decode_delivery
from claude_hooks.pool import Pool
from claude_hooks.store.intake import DeliveryRecord, IntakeStore
from claude_hooks.sweep import Sweeper

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


@dataclass(slots=True)
class Applied:
    tasks: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def _summary(payload: Payload | None) -> dict[str, Any]:
    """Repository, number, sender and action of a payload, for the deliveries table."""
    if payload is None:
        return {}
    repository = getattr(payload, "repository", None)
    number = None
    for attribute in ("issue", "pull_request"):
        item = getattr(payload, attribute, None)
        if item is not None:
            number = item.number
            break
    if number is None:
        number = getattr(payload, "pull_number", None)
    sender = getattr(payload, "sender", None) or getattr(
        getattr(payload, "run", None), "trigger_user", None
    )
    return {
        "repo": repository.full_name if repository is not None else None,
        "number": number,
        "sender": sender.login if sender is not None else None,
        "action": getattr(payload, "action", None),
    }


def _typed(event_type: str, data: Mapping[str, Any]) -> Payload | None:
    """The typed payload, refused if the signed body contradicts the unsigned event type."""
    payload = parse_payload(event_type, data)
    if payload is not None:
        check_event_type(event_type, payload)
    return payload


def _kept(decision: flows.Decision | None, applied: Applied) -> flows.Decision | None:
    """The assignment state to save when a decision was applied only in part: the types whose
    dispatch failed stay unassigned, so the same assignment is new work when replayed."""
    if decision is None or decision.assigned is None:
        return None
    failed = {agent_type for agent_type, _ in decision.dispatch} - {
        task["type"] for task in applied.tasks
    }
    repo, number, types = decision.assigned
    return replace(decision, assigned=(repo, number, types - failed))


class Intake:
    def __init__(
        self,
        config: Config,
        pool: Pool,
        store: IntakeStore,
        forge: Forge,
        clock: Callable[[], float],
        insecure: bool = False,
    ) -> None:
        self.config = config
        self.pool = pool
        self.sweeper = Sweeper(config, pool.workspaces, store, forge)
        self.store = store
        self.forge = forge
        self.clock = clock
        secret = config.server.webhook_secret
        self.secret = secret.get_secret_value().encode() if secret is not None else None
        self.insecure = insecure
        self.counts: dict[str, int] = {}
        self._in_progress: set[str] = set()

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def context(self, delivery_id: str | None) -> flows.FlowContext:
        forge = self.forge if self.forge.enabled else None
        return flows.FlowContext(
            config=self.config,
            intake=self.store,
            may_trigger=self.forge.may_trigger,
            delivery_id=delivery_id,
            now=self.clock(),
            find_pull=forge.find_pull if forge else None,
            find_head=forge.find_head if forge else None,
        )

    async def receive(
        self, headers: Mapping[str, str], body: bytes, body_hmac: str | None = None
    ) -> Answer:
        """`body_hmac`: the body's HMAC with the webhook secret, if computed as it arrived."""
        if self.secret is None and not self.insecure:
            return Answer(401, {"status": "rejected", "error": "server.webhook_secret is not set"})
        try:
            delivery = decode_delivery(
                headers,
                body,
                self.secret,
                max_body_bytes=self.config.server.max_body_bytes,
                body_hmac=body_hmac,
            )
            payload = _typed(delivery.event_type, delivery.payload)
        except WebhookError as exc:
            self._count(f"rejected_{exc.status}")
            log.warning("webhook rejected (%d): %s", exc.status, exc)
            return Answer(exc.status, {"status": "rejected", "error": str(exc)})
        record = DeliveryRecord(
            id=delivery.delivery_id,
            flavor=delivery.flavor,
            event=delivery.event,
            event_type=delivery.event_type,
            received_at=self.clock(),
            body=delivery.body.decode("utf-8", "replace"),
            **_summary(payload),
        )
        return await self._process(record, payload)

    async def replay(self, delivery_id: str) -> Answer:
        """Run a stored delivery through the flows again, as a new delivery."""
        original = await self.store.get_delivery(delivery_id)
        if original is None:
            raise NotFoundError(f"no delivery with id {delivery_id!r}: see 'deliveries list'")
        try:
            payload = _typed(original.event_type, json.loads(original.body))
        except WebhookError as exc:
            return Answer(exc.status, {"status": "rejected", "error": str(exc)})
        record = replace(
            original,
            id=f"replay-{uuid.uuid4()}",
            received_at=self.clock(),
            reason=None,
            task_ids=[],
            replay_of=original.id,
        )
        return await self._process(record, payload)

    async def _process(self, record: DeliveryRecord, payload: Payload | None) -> Answer:
        # The primary key settles duplicates for good; the set covers one still in progress.
        if record.id in self._in_progress or await self.store.has_delivery(record.id):
            self._count("duplicate")
            return Answer(200, {"status": "duplicate", "delivery": record.id})
        self._in_progress.add(record.id)
        applied = Applied()
        decision: flows.Decision | None = None
        try:
            decision = await flows.route(self.context(record.id), record.event_type, payload)
            await self.apply(decision, applied)
        except ForgejoError as exc:
            reason = f"could not ask Forgejo: {exc}"
            return await self._settle(
                record, "error", reason, applied, 502, _kept(decision, applied)
            )
        except ClaudeHooksError as exc:  # NoInstanceError above all: no instance of a type
            return await self._settle(
                record, "error", str(exc), applied, 503, _kept(decision, applied)
            )
        except Exception as exc:
            # A fault of ours, not of the input: still record the delivery and what it queued.
            log.exception("delivery %s could not be processed", record.id)
            reason = f"internal error: {exc!r}"
            return await self._settle(
                record, "error", reason, applied, 500, _kept(decision, applied)
            )
        finally:
            self._in_progress.discard(record.id)
        outcome = "queued" if applied.tasks else "ignored"
        status = 202 if applied.tasks else 200
        return await self._settle(record, outcome, decision.reason, applied, status, decision)

    async def _settle(
        self,
        record: DeliveryRecord,
        outcome: str,
        reason: str,
        applied: Applied,
        status: int,
        decision: flows.Decision | None = None,
    ) -> Answer:
        """Record the delivery with its outcome (and the assignment state it leaves) at once."""
        record.outcome, record.reason = outcome, reason
        record.task_ids = [task["id"] for task in applied.tasks]
        assigned = decision.assigned if decision is not None else None
        await self.store.add_delivery(record, assigned)
        self._count(outcome)
        self.pool.bus.publish(
            Event(
                "delivery",
                data={
                    "id": record.id,
                    "event_type": record.event_type,
                    "outcome": outcome,
                    "reason": reason,
                },
            )
        )
        log.info("delivery %s (%s): %s: %s", record.id, record.event_type, outcome, reason)
        body: dict[str, Any] = {"status": outcome, "reason": reason, "delivery": record.id}
        if applied.tasks:
            body["tasks"] = applied.tasks
        if applied.cancelled:
            body["cancelled"] = applied.cancelled
        return Answer(status, body)

    async def apply(self, decision: flows.Decision, applied: Applied) -> None:
        """Queue, merge and cancel as the decision says; each task is committed on return."""
        for agent_type, request in decision.dispatch:
            pending = await self.store.pending_task(request.session_key, request.kind)
            if pending is not None and await self.store.merge_into(pending, request.payload):
                task = await self.pool.store.get_task(pending)
                if task is not None:
                    applied.tasks.append(
                        {
                            "id": task.id,
                            "type": task.type,
                            "agent": task.agent,
                            "session_key": task.session_key,
                            "merged": True,
                        }
                    )
                    continue
            task = await self.pool.dispatch(agent_type, request)
            applied.tasks.append(
                {
                    "id": task.id,
                    "type": task.type,
                    "agent": task.agent,
                    "session_key": task.session_key,
                    "merged": False,
                }
            )
        for task_id in await self.store.active_tasks(decision.cancel):
            try:
                await self.pool.cancel_task(task_id)
                applied.cancelled.append(task_id)
            except ConflictError:
                continue
        for comment in decision.comments:
            self.pool.bus.publish(Event("comment", data={"comment": comment}))
        if decision.watch is not None:
            await self.store.put_ci_watch(decision.watch)
        self.sweeper.schedule(decision.cleanup)
