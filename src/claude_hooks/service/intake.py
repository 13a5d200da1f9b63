"""Webhook intake: verify, record, run the flow, apply its decision, answer Forgejo.

A 2xx answer means the delivery and every task it created are committed. Agent work happens
after the answer; the only waits before it are the database and, for a sender not seen in a
while, one permission look-up on the forge, cut short at the answer deadline: a delivery that
needs a forge that cannot answer in time is stored `pending` and retried (see `pending`).
Refused deliveries are recorded too (see `rejections`).

A node taking more than `server.max_deciding` deliveries at once (deciding or recording them)
does not make a burst wait behind them: it defers the next ones, recorded as pending
(committed together on PostgreSQL) and answered 202 at once, until one arrives alone; the
pending retrier decides them right after, in arrival order, and a later delivery about an
issue with deliveries still deferred goes after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from claude_hooks.config import Config
from claude_hooks.core.decision import Assigned, Decision, IntakeView, Label, Reset
from claude_hooks.core.domain import Task
from claude_hooks.core.loop_guard import LoopGuard
from claude_hooks.core.policy import IssueLimits, PolicyError, refuse_broken
from claude_hooks.errors import ClaudeHooksError, NoInstanceError, NotFoundError
from claude_hooks.forge.binding import check_event_type
from claude_hooks.forge.client import ForgejoError
from claude_hooks.forge.gateway import Forge
from claude_hooks.forge.payloads import Payload, PushPayload, parse_payload
from claude_hooks.forge.webhook import WebhookError, decode_delivery
from claude_hooks.service import flows, outcomes
from claude_hooks.service.events import Event
from claude_hooks.service.forge_commands import ForgeCommands
from claude_hooks.service.in_order import InOrder
from claude_hooks.service.pending import FORGE_SHARE, ForgeUnreachable, backoff, within
from claude_hooks.service.pool import Pool
from claude_hooks.service.rejections import RejectionLog
from claude_hooks.service.spool import Spool, SpoolError
from claude_hooks.service.storage_faults import RETRY_AFTER, StorageFaults
from claude_hooks.service.sweep import Sweeper
from claude_hooks.store import wakeups
from claude_hooks.store.base import Placement, Settle
from claude_hooks.store.decisions import Cause
from claude_hooks.store.faults import fault_reason, is_disconnect, is_storage_fault
from claude_hooks.store.intake import AheadView, DeliveryRecord, IntakeStore
from claude_hooks.store.pending import PendingEntry
from claude_hooks.store.wakeups import Wake

log = logging.getLogger(__name__)

# The share of the answer deadline kept for writing the spool when the database is late;
# the forge's look-ups end before (`pending.FORGE_SHARE`).
SPOOL_SHARE = 0.1
# Tries of a spooled delivery on connections the database dropped, before the next probe.
RECONNECTS = 25
# Why a delivery is pending when its node was too busy to decide it on arrival.
DEFERRED = (
    "deferred: the node was taking server.max_deciding deliveries already; decided next, "
    "in arrival order"
)
# Seconds between looks in the database for whether deliveries this node deferred are settled
# (another node's retrier may have settled them).
DEFERRED_CHECK = 1.0
# Seconds after the last deferral during which the node counts as crowded: the retrier then
# leaves the event loop to the arriving deliveries (see `pending.PendingRetrier`).
CROWDED_FOR = 0.5


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    retry_after: int | None = None  # seconds, sent as Retry-After


@dataclass(slots=True)
class Applied:
    tasks: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    recorded: bool = False  # the delivery was recorded with its tasks
    seen: bool = False  # its id was recorded before (by another node): nothing was placed


def _entry(task: Task, merged: bool) -> dict[str, Any]:
    return {
        "id": task.id,
        "type": task.type,
        "agent": task.agent,
        "session_key": task.session_key,
        "merged": merged,
    }


def _outcome(applied: Applied) -> str:
    """`queued` if it placed work, `cancelled` if it only cancelled some, else `ignored`."""
    if applied.tasks:
        return "queued"
    return "cancelled" if applied.cancelled else "ignored"


def _settler(record: DeliveryRecord, decision: Decision, before: Applied) -> Settle:
    """What to record with the tasks placed for `record`: the outcome `Intake._run` gives.
    `before`: what the delivery's forge commands did, carried out before the decision."""

    def settle(
        placements: list[Placement],
        merged: list[Task],
        cancelled: list[str],
        failure: NoInstanceError | None,
    ) -> tuple[DeliveryRecord, Assigned | None, list[Reset]]:
        entries = [_entry(t, merged=True) for t in merged]
        placed = [_entry(p.task, merged=False) for p in placements]
        done = Applied(before.tasks + entries + placed, before.cancelled + cancelled)
        record.task_ids = [task["id"] for task in done.tasks] + done.cancelled
        if failure is not None:
            record.outcome, record.reason = "error", str(failure)
            kept = _kept(decision, done)
            return record, kept.assigned if kept is not None else None, decision.resets
        record.outcome = _outcome(done)
        record.reason = decision.reason
        return record, decision.assigned, decision.resets

    return settle


@dataclass(frozen=True, slots=True)
class Verdict:
    """How running a delivery through the flows went, before it is recorded."""

    outcome: str
    reason: str
    status: int
    applied: Applied
    decision: Decision | None


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


def _source(record: DeliveryRecord) -> str:
    """The delivery, as the cause of what it cancels: `forge event issue_unassign by bob`."""
    event = record.event_type + (f" {record.action}" if record.action else "")
    sender = f" by {record.sender}" if record.sender else ""
    return f"forge event {event}{sender} (delivery {record.id})"


def _issue(record: DeliveryRecord) -> tuple[str, int] | None:
    """The issue or pull request a delivery is about, whose deliveries take turns."""
    if record.repo is None or record.number is None:
        return None
    return record.repo, record.number


def _typed(event_type: str, data: Mapping[str, Any]) -> Payload | None:
    """The typed payload, refused if the signed body contradicts the unsigned event type."""
    payload = parse_payload(event_type, data)
    if payload is not None:
        check_event_type(event_type, payload)
    return payload


def _kept(decision: Decision | None, applied: Applied) -> Decision | None:
    """The state to save when a decision was applied only in part: the types whose dispatch
    failed stay unassigned, so the same assignment is new work when replayed; a human's
    loop-guard resets are kept."""
    if decision is None or decision.assigned is None:
        return decision
    failed = {agent_type for agent_type, _ in decision.dispatch} - {
        task["type"] for task in applied.tasks
    }
    repo, number, types = decision.assigned
    return replace(decision, assigned=(repo, number, types - failed))


def _unposted(decision: Decision) -> Decision:
    """`decision` without what it would post: with no forge configured, nothing is. Copied
    only if it would post something (most decisions post nothing)."""
    posts = any(trip.comment is not None or trip.label is not None for trip in decision.trips)
    if not (posts or decision.comments or decision.policy_faults):
        return decision
    trips = [replace(trip, comment=None, label=None) for trip in decision.trips]
    return replace(decision, comments=[], trips=trips, policy_faults=[])


class Intake:
    def __init__(
        self,
        config: Config,
        pool: Pool,
        store: IntakeStore,
        forge: Forge,
        clock: Callable[[], float],
        wake_outbox: Callable[[], None],
        wake_pending: Callable[[], None],
        commands: ForgeCommands,
        sweeper: Sweeper,
        spool: Spool,
        guard: LoopGuard,
        rejections: RejectionLog,
        faults: StorageFaults,
        insecure: bool,
    ) -> None:
        """`wake_outbox`: the comments a decision wrote wait in the outbox; wake its drainer;
        `wake_pending`: a delivery was deferred; wake the pending retrier; `commands`:
        carries out forge commands; `sweeper`: removes closed issues' workdirs;
        `spool`: keeps deliveries while the database is late; `guard`: the loop guard's rules;
        `rejections`: records refused deliveries; `faults`: counts and logs storage faults;
        `insecure`: take unsigned deliveries (no webhook secret set)."""
        self.config = config
        self.pool = pool
        self.spool = spool
        self.faults = faults
        self.sweeper = sweeper
        self.guard = guard
        self.wake_outbox = wake_outbox
        self.wake_pending = wake_pending
        self._taking = 0  # deliveries of the webhook being decided or deferred now
        self._deferred: Counter[tuple[str, int]] = Counter()  # issue -> its deliveries deferred
        self._deferred_checked = 0.0  # event-loop time of the last look for settled ones
        self._last_deferral = float("-inf")  # event-loop time of the last delivery deferred
        self._deferring: dict[str, float] = {}  # delivery id -> arrival, being recorded now
        self._labelling: set[asyncio.Task[None]] = set()
        self.commands = commands
        self.store = store
        self.forge = forge
        self.clock = clock
        secret = config.server.webhook_secret
        self.secret = secret.get_secret_value().encode() if secret is not None else None
        self.insecure = insecure
        self.counts: dict[str, int] = {}
        self._in_progress: set[str] = set()
        self.in_order = InOrder()
        self.rejections = rejections

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def context(
        self,
        delivery_id: str | None,
        deadline: float | None = None,
        bounded: bool = False,
        view: IntakeView | None = None,
    ) -> flows.FlowContext:
        """The flows' view of the service. `bounded`: a forge look-up that fails, or does not
        finish by `deadline` (event-loop time), raises ForgeUnreachable; `view`: what the
        flows read through, the store by default."""
        forge = self.forge if self.forge.enabled else None
        may_trigger: flows.SenderCheck = self.forge.may_trigger
        find_pull: flows.PullLookup | None = forge.find_pull if forge else None
        find_head: flows.HeadLookup | None = forge.find_head if forge else None
        policies = self.pool.policies
        policy: flows.PolicyLookup = policies.of
        if bounded:
            may_trigger = within(may_trigger, deadline)
            find_pull = within(find_pull, deadline) if find_pull else None
            find_head = within(find_head, deadline) if find_head else None
            # Only a look-up that may wait for the forge is bounded (a bound costs a timer).
            policy = within(policy, deadline) if policies.reads_forge else policy
        return flows.FlowContext(
            config=self.config,
            view=view or self.store,
            may_trigger=may_trigger,
            delivery_id=delivery_id,
            now=self.clock(),
            find_pull=find_pull,
            find_head=find_head,
            policy=flows.once_each(policy),
        )

    def _answer_deadline(self) -> float:
        budget = self.config.server.answer_deadline * FORGE_SHARE
        return asyncio.get_running_loop().time() + budget

    async def reject(
        self,
        status: int,
        reason: str,
        headers: Mapping[str, str],
        size: int,
        remote: str | None = None,
    ) -> Answer:
        """Count, log and record a refused delivery; a store fault never changes the answer."""
        self._count(f"rejected_{status}")
        log.warning("webhook rejected (%d) from %s: %s", status, remote or "?", reason)
        try:
            if await self.rejections.record(status, reason, headers, size, remote):
                self.pool.bus.publish(Event("delivery", data={"outcome": "rejected"}))
        except Exception as exc:
            if not is_storage_fault(exc):
                log.exception("could not record a rejected delivery")
            else:
                self.faults.note(fault_reason(exc))
        return Answer(status, {"status": "rejected", "error": reason})

    async def receive(
        self,
        headers: Mapping[str, str],
        body: bytes,
        remote: str | None = None,
        body_hmac: str | None = None,
    ) -> Answer:
        """`body_hmac`: the body's HMAC with the webhook secret, if computed as it arrived."""
        if self.secret is None and not self.insecure:
            return await self.reject(
                401, "server.webhook_secret is not set", headers, len(body), remote
            )
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
            return await self.reject(exc.status, str(exc), headers, len(body), remote)
        record = DeliveryRecord(
            id=delivery.delivery_id,
            flavor=delivery.flavor,
            event=delivery.event,
            event_type=delivery.event_type,
            received_at=self.clock(),
            body=delivery.text,
            **_summary(payload),
        )
        return await self._take(record, payload)

    def _storage_budget(self) -> float:
        """Seconds the database has to take a delivery; the rest of the answer deadline is
        the spool's (an fsync: milliseconds)."""
        return self.config.server.answer_deadline * (1 - SPOOL_SHARE)

    async def _take(self, record: DeliveryRecord, payload: Payload | None) -> Answer:
        """Process a verified delivery within the answer deadline, or spool it: a storage
        fault is never a 500, and what the database could not take is not lost."""
        if self.spool.busy:
            # In arrival order: the new one goes after those already waiting.
            return await self._spooled(record, "earlier deliveries wait in the spool")
        budget = self._storage_budget()
        self._taking += 1
        try:
            async with asyncio.timeout(budget):
                if await self._crowded(record):
                    return await self._defer(record)
                return await self._process(record, payload)
        except Exception as exc:
            if not is_storage_fault(exc):
                raise
            reason = fault_reason(exc)
            if isinstance(exc, TimeoutError):
                reason = f"database: no answer within {budget:g} s"
        finally:
            self._taking -= 1
        self.faults.note(reason)
        return await self._spooled(record, reason)

    async def _crowded(self, record: DeliveryRecord) -> bool:
        """Whether `record` is deferred: the node takes more than `server.max_deciding`
        deliveries at once, or it deferred one lately and `record` is not alone (those it
        defers count: under a burst it keeps deferring rather than decide some, each decision
        costing the event loop the time of several deferrals), or deliveries about its issue
        are deferred (it goes after them)."""
        if self._deferred:
            now = asyncio.get_running_loop().time()
            if now - self._deferred_checked >= DEFERRED_CHECK:
                self._deferred_checked = now
                if await self.pool.store.pending.count_pending(DEFERRED) == 0:
                    self._deferred.clear()  # settled, here or by another node's retrier
            issue = _issue(record)
            if issue is not None and issue in self._deferred:
                return True
        # `record` is one of those taken; alone, it is decided whatever came before.
        return self._taking > self.config.server.max_deciding or (
            self._taking > 1 and self.crowded()
        )

    async def _defer(self, record: DeliveryRecord) -> Answer:
        """Record `record` as pending, to be decided next by the pending retrier. Its issue
        counts as deferred from the start, so a delivery about it arriving meanwhile goes
        after it; and while it is being recorded the retrier takes none received after it
        (`horizon`): two deferrals can commit in either order."""
        # Its id decided or being deferred here: the primary key settles the rest.
        if record.id in self._in_progress or record.id in self._deferring:
            self._count("duplicate")
            return Answer(200, {"status": "duplicate", "delivery": record.id})
        record.outcome, record.reason = "pending", DEFERRED
        issue = _issue(record)
        if issue is not None:
            self._deferred[issue] += 1
        self._deferring[record.id] = record.received_at
        try:
            deferred = await self.pool.store.pending.defer(record)
        except BaseException:
            self._undefer(issue)
            raise
        finally:
            del self._deferring[record.id]
        if not deferred:
            self._undefer(issue)
            self._count("duplicate")
            return Answer(200, {"status": "duplicate", "delivery": record.id})
        # The retrier is woken when a burst begins; while it lasts, it takes its own time.
        if not self.crowded():
            self.wake_pending()
        self._last_deferral = asyncio.get_running_loop().time()
        self._published(record)
        return Answer(202, {"status": "pending", "reason": DEFERRED, "delivery": record.id})

    def horizon(self) -> float | None:
        """The arrival of the earliest delivery still being deferred (None: none is): the
        retrier takes only deliveries received before it."""
        return min(self._deferring.values(), default=None)

    def crowded(self) -> bool:
        """Whether deliveries arrive faster than the node decides them: it deferred one in
        the last `CROWDED_FOR` seconds."""
        return asyncio.get_running_loop().time() - self._last_deferral < CROWDED_FOR

    def _settled_deferred(self, entry: PendingEntry) -> None:
        """A delivery this node may have deferred is settled: its issue's later ones need not
        wait behind it."""
        if entry.last_error != DEFERRED or entry.repo is None or entry.number is None:
            return
        self._undefer((entry.repo, entry.number))

    def _undefer(self, issue: tuple[str, int] | None) -> None:
        if issue is None:
            return
        if self._deferred[issue] > 1:
            self._deferred[issue] -= 1
        else:
            self._deferred.pop(issue, None)

    async def _spooled(self, record: DeliveryRecord, reason: str) -> Answer:
        try:
            await self.spool.append(record, reason)
        except SpoolError as exc:
            self.faults.note(str(exc))
            self._count("refused_503")
            body = {"status": "rejected", "error": str(exc)}
            return Answer(503, body, retry_after=RETRY_AFTER)
        record.outcome, record.reason = "spooled", reason
        self._published(record)
        return Answer(202, {"status": "spooled", "reason": reason, "delivery": record.id})

    async def replay_spool(self) -> int:
        """Feed the spool's deliveries to the flows in arrival order, until it is empty or the
        database fails again (raised); how many were taken."""
        taken = 0
        while self.spool.waiting:
            entry = self.spool.waiting[0]
            record = replace(entry.record, outcome="queued", reason=None, task_ids=[])
            try:
                payload = _typed(record.event_type, json.loads(record.body))
            except (WebhookError, ValueError) as exc:
                log.warning("spooled delivery %s cannot be read: %s", record.id, exc)
                payload = None
            for attempt in range(1, RECONNECTS + 1):
                try:
                    if _issue(record) in self._deferred:
                        await self._defer(record)  # after its issue's deferred deliveries
                    else:
                        await self._process(record, payload)
                    break
                except Exception as exc:
                    # After a restart of the database each pooled connection fails once.
                    if attempt == RECONNECTS or not is_disconnect(exc):
                        raise
            self.spool.done(entry)
            taken += 1
        return taken

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
        if record.id in self._in_progress:
            self._count("duplicate")
            return Answer(200, {"status": "duplicate", "delivery": record.id})
        self._in_progress.add(record.id)
        deadline = self._answer_deadline()  # counted from arrival, its turn's wait included
        try:
            async with self.in_order.turn(_issue(record)):
                return await self._decide_and_apply(record, payload, deadline)
        finally:
            self._in_progress.discard(record.id)

    async def _decide_and_apply(
        self, record: DeliveryRecord, payload: Payload | None, deadline: float
    ) -> Answer:
        guarded = not self.guard.resets(record.event_type, record.sender)
        ahead = await self.store.look_ahead(record.id, _issue(record), guarded)
        if ahead.seen:
            self._count("duplicate")
            return Answer(200, {"status": "duplicate", "delivery": record.id})
        verdict = await self._run(record, payload, deadline, view=AheadView(ahead, self.store))
        if verdict.outcome == "pending":
            return await self._hold(record, verdict.reason)
        if verdict.outcome == "duplicate":
            self._count("duplicate")
            return Answer(200, {"status": "duplicate", "delivery": record.id})
        return await self._settle(record, verdict)

    async def _run(
        self,
        record: DeliveryRecord,
        payload: Payload | None,
        deadline: float | None,
        pending: bool = False,
        view: IntakeView | None = None,
    ) -> Verdict:
        """Route, review and apply; nothing is written before the forge look-ups, so a
        delivery that waits for the forge has changed nothing yet, and the decision is
        applied with the delivery's record in one transaction (`pending`: the record is
        there already, as pending, and settled with it; `view`: what the flows and the loop
        guard read through, the store by default)."""
        view = view or self.store
        applied = Applied()
        decision: Decision | None = None
        if isinstance(payload, PushPayload) and self.pool.policies is not None:
            # The pushed branch's policy file may have changed: read it again next time.
            branch = payload.ref.removeprefix("refs/heads/")
            self.pool.policies.pushed(payload.repository.full_name, branch)
        try:
            ctx = self.context(record.id, deadline, bounded=True, view=view)
            decision = await flows.route(ctx, record.event_type, payload)
            await self.steer(decision)
            limits = await self.fail_closed(ctx, decision)
            decision = await self.guard.review(
                view, decision, record.event_type, record.sender, limits
            )
            await outcomes.observe(ctx, record.event_type, payload, decision)
            await self.run_commands(decision, applied, record.id)
            if not self.forge.enabled:
                decision = _unposted(decision)
            await self.apply(decision, applied, _source(record), record, pending)
        except ForgeUnreachable as exc:
            reason = f"waiting for Forgejo ({exc}); retried automatically"
            return Verdict("pending", reason, 202, applied, None)
        except ForgejoError as exc:
            reason = f"could not ask Forgejo: {exc}"
            return Verdict("error", reason, 502, applied, None)
        except ClaudeHooksError as exc:  # NoInstanceError above all: no instance of a type
            return Verdict("error", str(exc), 503, applied, None)
        except Exception as exc:
            if is_storage_fault(exc):
                raise  # the database's fault, not the delivery's: spooled (see `_take`)
            # A fault of ours, not of the input: the decision's transaction was rolled back,
            # and the delivery is still recorded, alone.
            log.exception("delivery %s could not be processed", record.id)
            reason = f"internal error: {exc!r}"
            return Verdict("error", reason, 500, applied, None)
        if applied.seen:
            return Verdict("duplicate", "", 200, applied, None)
        status = 202 if applied.tasks else 200
        return Verdict(_outcome(applied), decision.reason, status, applied, decision)

    async def fail_closed(
        self, ctx: flows.FlowContext, decision: Decision
    ) -> dict[str, IssueLimits]:
        """Refuse the decision's new work in repositories whose policy file is broken
        (`refuse_broken`); the per-issue limits of the others, for the loop guard."""
        limits: dict[str, IssueLimits] = {}
        if ctx.policy is None:
            return limits
        wanted = dict.fromkeys((r.repo, flows.base_of(r)) for _, r in decision.dispatch)
        broken: set[str] = set()
        for repo, base in wanted:
            if repo in broken:
                continue
            try:
                policy = await ctx.policy(repo, base)
            except PolicyError as exc:
                broken.add(repo)
                refuse_broken(decision, repo, exc)
                continue
            limits.setdefault(repo, policy.issue_limits())
        return limits

    async def run_commands(
        self, decision: Decision, applied: Applied, delivery_id: str | None
    ) -> None:
        """Carry out the decision's forge commands before it is applied: the delivery's
        record says what each did, and a reply goes to the outbox with the decision. A stop
        cancels through `Commands.cancel` (`Store.cancel_tasks`)."""
        for command in decision.commands:
            done = await self.commands.run(command, delivery_id)
            decision.reason += f"; {command.agent_type} {command.word}: {done.summary}"
            applied.tasks += [_entry(task, merged=False) for task in done.tasks]
            applied.cancelled += done.cancelled
            reply = self.commands.reply(command, done)
            if reply is not None:
                decision.comments.append(reply)
        decision.commands = []

    async def steer(self, decision: Decision) -> None:
        """Send each steering mention into its session's running task; where none runs it
        becomes a task as before (and passes the loop guard like one)."""
        for agent_type, request in decision.steer:
            steered = await self.pool.store.steering.steer(
                request.session_key,
                str(request.payload.get("sender", "")),
                str(request.payload.get("comment_body", "")),
                request.payload.get("comment_id"),
                request.payload,
                self.clock(),
            )
            if steered is None:
                decision.dispatch.append((agent_type, request))
                continue
            self.pool.heard(Wake(wakeups.STEER, steered))
            decision.reason += f"; steered {agent_type}'s running task {steered}"
        decision.steer = []

    async def _hold(self, record: DeliveryRecord, reason: str) -> Answer:
        """Keep a delivery that waits for the forge; the retrier takes it from here."""
        record.outcome, record.reason = "pending", reason
        first = self.clock() + self.config.server.pending_retry_min
        await self.pool.store.pending.add_pending(record, first)
        self._published(record)
        return Answer(202, {"status": "pending", "reason": reason, "delivery": record.id})

    async def retry_pending(self, entry: PendingEntry) -> str:
        """Run a pending delivery through the flows again; the outcome it now has. Its
        issue's turn is taken before anything waits, so retries started in due order
        take their turns in that order."""
        issue = (entry.repo, entry.number) if entry.repo and entry.number is not None else None
        async with self.in_order.turn(issue):
            outcome = await self._retry(entry)
        if outcome != "pending":
            self._settled_deferred(entry)
        return outcome

    async def _retry(self, entry: PendingEntry) -> str:
        record = entry.record or await self.store.get_delivery(entry.id)
        if record is None:
            return "gone"
        payload = parse_payload(record.event_type, json.loads(record.body))
        self._in_progress.add(record.id)
        try:
            # The issue's reads in one round trip, as for a delivery on arrival (its own
            # record is there, pending: a race with another retrier is `AlreadySettled`).
            guarded = not self.guard.resets(record.event_type, record.sender)
            ahead = await self.store.look_ahead(record.id, _issue(record), guarded)
            view = AheadView(ahead, self.store)
            # In the background nothing waits for an answer: the client's own bounds suffice.
            verdict = await self._run(record, payload, None, pending=True, view=view)
            if verdict.outcome == "pending":
                attempts = entry.attempts + 1
                server = self.config.server
                wait = backoff(attempts, server.pending_retry_min, server.pending_retry_max)
                await self.pool.store.pending.reschedule(
                    record.id, attempts, self.clock() + wait, verdict.reason
                )
                log.info("delivery %s still pending (try %d): %s", record.id, attempts, wait)
                return "pending"
            if verdict.applied.seen:
                return "duplicate"  # settled by another node's retrier first
            self._fill(record, verdict)
            if verdict.applied.recorded or await self._record_alone(record, pending=True):
                self._published(record)
            return record.outcome
        finally:
            self._in_progress.discard(record.id)

    async def _record_alone(self, record: DeliveryRecord, pending: bool = False) -> bool:
        """Record a delivery whose decision left nothing (it failed before or while being
        applied); False if its id was recorded (or settled) before."""
        dispatched = await self.pool.store.dispatch_all(
            [], lambda _placed, _merged, _cancelled, _failure: (record, None, ()), pending=pending
        )
        return dispatched.recorded

    def _fill(self, record: DeliveryRecord, verdict: Verdict) -> None:
        record.outcome, record.reason = verdict.outcome, verdict.reason
        record.task_ids = [task["id"] for task in verdict.applied.tasks] + verdict.applied.cancelled

    def _published(self, record: DeliveryRecord) -> None:
        self._count(record.outcome)
        self.pool.bus.publish(
            Event(
                "delivery",
                data={
                    "id": record.id,
                    "event_type": record.event_type,
                    "outcome": record.outcome,
                    "reason": record.reason,
                },
            )
        )
        log.info(
            "delivery %s (%s): %s: %s",
            record.id,
            record.event_type,
            record.outcome,
            record.reason,
        )

    async def _settle(self, record: DeliveryRecord, verdict: Verdict) -> Answer:
        """Record the delivery with its outcome (and the assignment state it leaves) at once."""
        self._fill(record, verdict)
        if not verdict.applied.recorded:
            await self._record_alone(record)
        self._published(record)
        body: dict[str, Any] = {
            "status": verdict.outcome,
            "reason": verdict.reason,
            "delivery": record.id,
        }
        if verdict.applied.tasks:
            body["tasks"] = verdict.applied.tasks
        if verdict.applied.cancelled:
            body["cancelled"] = verdict.applied.cancelled
        return Answer(verdict.status, body)

    async def apply(
        self,
        decision: Decision,
        applied: Applied,
        source: str = "a flow of claude-hooks",
        record: DeliveryRecord | None = None,
        pending: bool = False,
    ) -> None:
        """Apply the whole decision in one transaction (`Store.dispatch_all`): its writes, its
        tasks (merged into a queued twin or placed) and `record`, if given; then act on what
        was committed. `source` and the record's id are kept as what cancelled a task."""
        cause = Cause(source, record.id if record is not None else None, self.clock())
        # What the delivery's forge commands did already, recorded with it.
        before = Applied(list(applied.tasks), list(applied.cancelled))
        settle = _settler(record, decision, before) if record is not None else None
        dispatched = await self.pool.dispatch_all(
            decision.dispatch, settle, decision, cause, pending
        )
        applied.recorded, applied.seen = dispatched.recorded, not dispatched.recorded
        if not dispatched.recorded:
            return
        for twin in dispatched.merged:
            task = await self.pool.store.get_task(twin.id)
            if task is not None:
                applied.tasks.append(_entry(task, merged=True))
        applied.tasks += [_entry(p.task, merged=False) for p in dispatched.placements]
        written = dispatched.written
        for task_id in written.cancelled:
            await self.pool.publish_finished(task_id)
        for task_id in written.stopping:
            # Run here, or by another node: the signal written with the decision stops it.
            self.pool.stop_running(task_id)
        applied.cancelled += written.cancelled + written.stopping
        if decision.comments or decision.trips or decision.policy_faults:
            self.wake_outbox()
        for label in written.labels:
            self._label(label)
        self.sweeper.schedule(decision.cleanup)
        if dispatched.failure is not None:
            raise dispatched.failure

    def _label(self, label: Label) -> None:
        """Put a label on the forge in the background (it may take the forge's timeouts)."""
        if not self.forge.enabled:
            return
        task = asyncio.get_running_loop().create_task(self._put_label(label))
        self._labelling.add(task)
        task.add_done_callback(self._labelling.discard)

    async def _put_label(self, label: Label) -> None:
        try:
            await self.forge.label(label.as_type, label.repo, label.number, label.name)
        except ForgejoError as exc:
            log.warning("could not label %s#%d %r: %s", label.repo, label.number, label.name, exc)

    async def stop(self) -> None:
        """Stop the labels still being put and the commands' reactions."""
        for task in list(self._labelling):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.commands.stop()
