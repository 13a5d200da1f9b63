"""The dashboard: server-rendered pages that stay live over server-sent events.

Each page is made of named sections. The page renders them once; `GET /live` renders them again
when an event on the service's bus concerns them (coalesced over a short window) and sends a
section only when its HTML changed, so a quiet service sends nothing but a keep-alive. The
instances' log tails are the one thing that changes without an event: the overview looks at them
once a second. Every asset is served from the package; nothing comes from a CDN.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from markupsafe import Markup

from claude_hooks import __version__
from claude_hooks.config import ServerConfig
from claude_hooks.core.domain import (
    DELIVERY_OUTCOMES,
    RECORDED_OUTCOMES,
    REJECTED,
    SPOOLED,
    Task,
    TaskState,
)
from claude_hooks.errors import InvalidInputError, NotFoundError, UnknownTaskError
from claude_hooks.service.commands import RETRYABLE
from claude_hooks.service.elastic import ElasticView, elastic_views
from claude_hooks.service.events import TASK_CHANGED, Event, Subscription
from claude_hooks.service.history import check_outcome
from claude_hooks.service.rejections import hint
from claude_hooks.service.runtime import Service
from claude_hooks.service.task_lookup import find_task
from claude_hooks.service.views import MAX_OFFSET, history_view
from claude_hooks.store.base import InstanceView, TaskFilter
from claude_hooks.store.intake import DeliveryRecord
from claude_hooks.web import spend
from claude_hooks.web.auth import (
    COOKIE_NAME,
    check_request,
    require_token,
    token_matches,
)
from claude_hooks.web.login_limit import LoginLimit
from claude_hooks.web.logs import log_tail
from claude_hooks.web.outcomes import outcomes_context
from claude_hooks.web.sessions import Sessions

PAGE_SIZE = 50
RECENT = 8  # rows of recent deliveries and of finished tasks on the overview
QUEUE_SHOWN = 8  # queued tasks listed per instance on the overview
CHANGES_READ = 50  # the latest elastic changes read for the overview (5 shown per type)
LOG_LINES = 6  # lines of a running task's log on the overview
TICK = 1.0  # seconds between looks at log tails (and at the server stopping)
COALESCE = 0.15  # seconds to gather a burst of events into one update
KEEPALIVE = 15.0  # seconds of silence before a comment line keeps proxies from closing
DAY = 24 * 3600.0

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("claude_hooks.web", "templates"),
    autoescape=jinja2.select_autoescape(("html",)),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def _clock(timestamp: float | None) -> str:
    """Server-local date, time and zone; the page's script shows it in the browser's zone."""
    if timestamp is None:
        return "—"
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _segment(value: object) -> str:
    """One URL path segment: every id and name the dashboard puts in a URL goes through this,
    so none can add a segment, a query or a dot segment to it."""
    text = str(value)
    return "%2E" * len(text) if text in (".", "..") else quote(text, safe="")


_env.filters.update(duration=_duration, usd=_usd, clock=_clock, segment=_segment)
_env.globals.update(hint=hint)


def _render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(**context)


# what the sections show


@dataclass(frozen=True, slots=True)
class QueuedInfo:
    """What the overview shows of a queued task; it never changes while the task waits."""

    id: str
    kind: str
    repo: str
    number: int
    enqueued_at: float


class QueuedCache:
    """Queued tasks' details by id, so a live overview does not read each one every second."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self.known: dict[str, QueuedInfo] = {}

    async def get(self, service: Service, task_id: str) -> QueuedInfo | None:
        """None when the task is gone (a finished task's row is never deleted, so: never)."""
        info = self.known.get(task_id)
        if info is not None:
            return info
        task = await service.store.get_task(task_id)
        if task is None:
            return None
        if len(self.known) >= self.LIMIT:
            self.known.clear()
        info = self.known[task_id] = QueuedInfo(
            task.id, task.kind.value, task.repo, task.number, task.enqueued_at
        )
        return info


def start_of_today() -> float:
    now = datetime.now().astimezone()
    return now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


@dataclass(slots=True)
class Tally:
    """One type's (or every type's) finished tasks today, and its instances now."""

    name: str
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    cost: float = 0.0
    run_seconds: float = 0.0
    runs: int = 0
    busy: int = 0
    instances: int = 0
    queued: int = 0

    @property
    def mean_duration(self) -> float | None:
        return self.run_seconds / self.runs if self.runs else None

    def add(self, state: str, count: int, cost: float, run_seconds: float, runs: int) -> None:
        if state in ("succeeded", "failed", "cancelled"):
            setattr(self, state, getattr(self, state) + count)
        self.cost += cost
        self.run_seconds += run_seconds
        self.runs += runs


async def _stats(service: Service, instances: list[InstanceView]) -> dict[str, Any]:
    since = start_of_today()
    store = service.store
    total = Tally("all")
    per_type = {name: Tally(name) for name in service.config.types}
    for found in await store.task_tallies(since):
        tally = per_type.setdefault(found.type, Tally(found.type))
        for target in (tally, total):
            target.add(found.state, found.count, found.cost_usd, found.run_seconds, found.runs)
    for instance in instances:
        tally = per_type.setdefault(instance.type, Tally(instance.type))
        for target in (tally, total):
            target.instances += 1
            target.busy += instance.running is not None
            target.queued += len(instance.queue)
    outcomes = {outcome: 0 for outcome in RECORDED_OUTCOMES}
    for delivered in await store.delivery_tallies(since):
        outcomes[delivered.outcome] = outcomes.get(delivered.outcome, 0) + delivered.count
    return {
        "total": total,
        "types": list(per_type.values()),
        "deliveries": outcomes,
        "delivered": sum(outcomes.values()),
    }


@dataclass(slots=True)
class Instance:
    name: str
    enabled: bool
    state: str
    task: Task | None
    log: list[str]
    queue: list[QueuedInfo]
    queued: int
    node: str | None = None
    pinned_node: str | None = None
    waiting: str | None = None  # why its head waits (a concurrency group), on this node
    auto: bool = False  # added by the elastic rule


@dataclass(slots=True)
class TypeGroup:
    name: str
    runner: str
    instances: list[Instance] = field(default_factory=list)
    elastic: ElasticView | None = None  # `[types.<t>] instances`: range, notes, changes

    @property
    def busy(self) -> int:
        return sum(1 for i in self.instances if i.state == "busy")

    @property
    def idle(self) -> int:
        return sum(1 for i in self.instances if i.state == "idle")

    @property
    def disabled(self) -> int:
        return sum(1 for i in self.instances if not i.enabled)

    @property
    def queued(self) -> int:
        return sum(i.queued for i in self.instances)


async def _instance(
    service: Service, cache: QueuedCache, instance: InstanceView, waits: dict[str, str]
) -> Instance:
    task = await service.store.get_task(instance.running) if instance.running else None
    log: list[str] = []
    if task is not None:
        log = await log_tail(service, task, LOG_LINES)
    shown = [await cache.get(service, task_id) for task_id in instance.queue[:QUEUE_SHOWN]]
    return Instance(
        name=instance.name,
        enabled=instance.enabled,
        state=instance.state,
        task=task,
        log=log,
        queue=[info for info in shown if info is not None],
        queued=len(instance.queue),
        node=instance.node,
        pinned_node=instance.pinned_node,
        waiting=waits.get(instance.name),
        auto=instance.auto,
    )


async def _groups(
    service: Service, cache: QueuedCache, instances: list[InstanceView]
) -> list[TypeGroup]:
    changes = await service.store.elastic.changes(CHANGES_READ)
    elastic = elastic_views(service.config, instances, changes)
    groups = {
        name: TypeGroup(name, type_config.runner, elastic=elastic.get(name))
        for name, type_config in service.config.types.items()
    }
    waits = await service.pool.waits()
    for instance in instances:
        group = groups.get(instance.type)
        if group is not None:
            group.instances.append(await _instance(service, cache, instance, waits))
    return list(groups.values())


# the pages' parameters


@dataclass(frozen=True, slots=True)
class Filters:
    """A tasks or deliveries listing: what to show and which page of it."""

    state: TaskState | None = None
    type: str | None = None
    agent: str | None = None
    repo: str | None = None
    outcome: str | None = None
    offset: int = 0
    limit: int = PAGE_SIZE

    @property
    def task_filter(self) -> TaskFilter:
        return TaskFilter(state=self.state, type=self.type, agent=self.agent, repo=self.repo)

    def params(self, **changes: Any) -> dict[str, str]:
        values = {
            "state": self.state.value if self.state else None,
            "type": self.type,
            "agent": self.agent,
            "repo": self.repo,
            "outcome": self.outcome,
            "offset": self.offset or None,
            "limit": self.limit if self.limit != PAGE_SIZE else None,
            **changes,
        }
        return {key: str(value) for key, value in values.items() if value not in (None, "", 0)}

    def query(self, **changes: Any) -> str:
        return urlencode(self.params(**changes))


def _filters(
    state: str | None = None,
    type: str | None = None,
    agent: str | None = None,
    repo: str | None = None,
    outcome: str | None = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> Filters:
    """Query parameters as the filter forms send them: an empty field means no filter."""
    parsed_state = None
    if state:
        try:
            parsed_state = TaskState(state)
        except ValueError:
            choices = ", ".join(s.value for s in TaskState)
            raise InvalidInputError(f"state must be one of {choices}, not {state!r}") from None
    check_outcome(outcome)
    return Filters(
        parsed_state, type or None, agent or None, repo or None, outcome or None, offset, limit
    )


FiltersDep = Annotated[Filters, Depends(_filters)]


# views: a page's sections and the events that change them


Builder = Callable[[], Awaitable[str]]


@dataclass(slots=True)
class View:
    name: str
    params: dict[str, str]
    sections: dict[str, Builder]
    affected: Callable[[Event], set[str]]
    ticking: set[str] = field(default_factory=set)

    @property
    def live_url(self) -> str:
        return "/live?" + urlencode({"view": self.name, **self.params})

    async def render(self) -> dict[str, Markup]:
        return {name: Markup(await build()) for name, build in self.sections.items()}


def _common(service: Service) -> dict[str, Any]:
    """What every section's template needs: the forge's base URL for issue links."""
    return {"forge": service.config.forgejo.url.rstrip("/")}


def _task_events(kinds: set[str]) -> Callable[[Event], set[str]]:
    def affected(event: Event) -> set[str]:
        return set(kinds) if event.kind.startswith("task.") else set()

    return affected


def overview_view(service: Service, cache: QueuedCache) -> View:
    async def agents() -> str:
        instances = await service.store.instances()
        groups = await _groups(service, cache, instances)
        return _render("_agents.html", groups=groups, **_common(service))

    async def stats() -> str:
        return _render("_stats.html", **await _stats(service, await service.store.instances()))

    async def finished() -> str:
        found = await service.store.recently_finished(RECENT)
        return _render(
            "_tasks.html",
            tasks=found,
            positions={},
            compact=True,
            **_common(service),
        )

    async def recent_deliveries() -> str:
        found = await service.store.intake.list_deliveries(RECENT, 0)
        return _render("_deliveries.html", deliveries=found, compact=True, **_common(service))

    async def limits() -> str:
        return _render("_limits.html", **await spend.limits_context(service))

    async def nodes() -> str:
        now = service.node.now()  # the database's clock, which leases are counted on
        found = await service.store.nodes.list_nodes(now)
        return _render("_nodes.html", nodes=found, now=now, this_node=service.node.name)

    async def costs() -> str:
        return _render("_costs.html", **await spend.costs_context(service))

    def affected(event: Event) -> set[str]:
        if event.kind == "delivery":
            return {"recent-deliveries", "limits"}
        if event.kind == "limits":
            return {"limits"}
        if event.kind in ("task.finished", TASK_CHANGED):
            return {"agents", "stats", "finished", "limits", "costs"}
        return {"agents", "stats"} if event.kind.startswith("task.") else set()

    return View(
        "overview",
        {},
        {
            "stats": stats,
            "agents": agents,
            "recent-deliveries": recent_deliveries,
            "finished": finished,
            "limits": limits,
            "costs": costs,
            "nodes": nodes,
        },
        affected,
        ticking={"agents", "nodes"},
    )


def tasks_view(service: Service, filters: Filters) -> View:
    async def table() -> str:
        where = filters.task_filter
        found = await service.store.list_tasks(where, filters.limit, filters.offset)
        return _render(
            "_tasks.html",
            tasks=found,
            total=await service.store.count_tasks(where),
            filters=filters,
            positions=await service.store.queue_positions(t.id for t in found),
            compact=False,
            **_common(service),
        )

    return View("tasks", filters.params(), {"tasks": table}, _task_events({"tasks"}))


def single_task_view(service: Service, task_id: str) -> View:
    async def detail() -> str:
        task = await service.store.get_task(task_id)
        if task is None:
            raise UnknownTaskError(task_id)
        delivery = None
        if task.delivery_id:
            delivery = await service.store.intake.get_delivery(task.delivery_id)
        return _render(
            "_task.html",
            task=task,
            history=await history_view(service.store, task),
            retryable=task.state in RETRYABLE,
            delivery=delivery,
            position=(await service.store.queue_positions([task.id])).get(task.id),
            runs=await service.store.runs.of_task(task.id),
            timeline=_timeline(task, delivery),
            steers=await service.store.steering.of_task(task.id),
            **_common(service),
        )

    return View("task", {"id": task_id}, {"task": detail}, _task_events({"task"}))


def _timeline(
    task: Task, delivery: DeliveryRecord | None
) -> list[tuple[str, float | None, float | None]]:
    """(step, when, seconds since the previous step) from delivery to end."""
    end = task.state.value if task.state.finished else "finished"
    steps = [
        ("delivered", delivery.received_at if delivery else None),
        ("queued", task.enqueued_at),
        ("started", task.started_at),
        (end, task.finished_at),
    ]
    timeline: list[tuple[str, float | None, float | None]] = []
    previous: float | None = None
    for label, at in steps:
        delta = at - previous if at is not None and previous is not None else None
        timeline.append((label, at, delta))
        previous = at if at is not None else previous
    return timeline


def outcomes_view(service: Service) -> View:
    async def section() -> str:
        return _render("_outcomes.html", **await outcomes_context(service))

    def affected(event: Event) -> set[str]:
        return {"outcomes"} if event.kind in ("delivery", "task.finished") else set()

    return View("outcomes", {}, {"outcomes": section}, affected)


def deliveries_view(service: Service, filters: Filters) -> View:
    async def table() -> str:
        if filters.outcome == REJECTED:
            rejections = service.store.rejections
            return _render(
                "_rejections.html",
                rejections=await rejections.list_rejections(filters.limit, filters.offset),
                total=await rejections.count_rejections(),
                filters=filters,
            )
        store = service.store.intake
        if filters.outcome == SPOOLED:  # in this node's spool: the database may be away
            waiting = [entry.record for entry in service.intake.spool.waiting]
            found = list(reversed(waiting))[filters.offset : filters.offset + filters.limit]
            total = len(waiting)
        else:
            found = await store.list_deliveries(filters.limit, filters.offset, filters.outcome)
            total = await store.count_deliveries(filters.outcome)
        recent = await service.store.rejections.count_rejections(since=service.clock() - DAY)
        return _render(
            "_deliveries.html",
            deliveries=found,
            total=total,
            filters=filters,
            compact=False,
            rejected_today=recent,
            **_common(service),
        )

    def affected(event: Event) -> set[str]:
        return {"deliveries"} if event.kind == "delivery" else set()

    return View("deliveries", filters.params(), {"deliveries": table}, affected)


def single_delivery_view(service: Service, delivery_id: str) -> View:
    async def detail() -> str:
        record = await service.store.intake.get_delivery(delivery_id)
        if record is None:
            raise NotFoundError(f"no delivery with id {delivery_id!r}")
        looked_up = [await service.store.get_task(task_id) for task_id in record.task_ids]
        found = [task for task in looked_up if task is not None]
        pending = None
        if record.outcome == "pending":
            pending = await service.store.pending.get_pending(delivery_id)
        stopped = await service.store.notes.cancelled_by_delivery(delivery_id)
        cancelled = [await service.store.get_task(task_id) for task_id in stopped]
        return _render(
            "_delivery.html",
            delivery=record,
            tasks=found,
            cancelled=[task for task in cancelled if task is not None],
            pending=pending,
            positions=await service.store.queue_positions(t.id for t in found),
            **_common(service),
        )

    def affected(event: Event) -> set[str]:
        return {"delivery"} if event.kind == "delivery" or event.kind.startswith("task.") else set()

    return View("delivery", {"id": delivery_id}, {"delivery": detail}, affected)


def _pretty(body: str) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body


# routes

router = APIRouter(include_in_schema=False)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def _page(request: Request, template: str, view: View, **extra: Any) -> Response:
    service = _service(request)
    html = _render(
        template,
        view=view,
        sections=await view.render(),
        insecure=service.insecure_no_signature,
        unconfined=service.unconfined_types,
        spooled=len(service.intake.spool.waiting),
        database_problem=service.readiness.database_problem(),
        low_disk=service.pool.low_disk(),
        version=__version__,
        **extra,
        **_common(service),
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _login_redirect(request: Request) -> RedirectResponse | None:
    """Pages send a browser without a valid session to the login form, and back after it."""
    if check_request(request) is None:
        return None
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)


def _safe_next(target: str | None) -> str:
    """Only a path on this service: never an open redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_page(request: Request, target: str, error: str | None, status: int) -> Response:
    html = _render(
        "login.html",
        target=target,
        error=error,
        insecure=_service(request).insecure_no_signature,
        version=__version__,
        session_hours=_service(request).config.server.session_hours,
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    if check_request(request) is None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, _safe_next(next), None, 200)


@router.post("/login")
async def login(request: Request) -> Response:
    limit: LoginLimit = request.app.state.login_limit
    address = request.client.host if request.client is not None else ""
    wait = limit.wait(address)
    if wait > 0:
        return _too_many(wait)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0]
    target = _safe_next((form.get("next") or ["/"])[0])
    expected: str = request.app.state.api_token
    if not token.strip():
        return _login_page(request, target, "Enter the api token (server.api_token).", 400)
    if not token_matches(token, expected):
        limit.failed(address)
        return _login_page(request, target, "Wrong token: use server.api_token.", 401)
    limit.succeeded(address)
    sessions: Sessions = request.app.state.sessions
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        sessions.start(),
        max_age=int(sessions.lifetime),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


def _too_many(wait: float) -> Response:
    seconds = max(1, math.ceil(wait))
    return JSONResponse(
        {"error": f"too many failed logins from this address: try again in {seconds} s"},
        status_code=429,
        headers={"Retry-After": str(seconds), "Cache-Control": "no-store"},
    )


@router.post("/logout")
async def logout(request: Request) -> Response:
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie is not None:
        sessions: Sessions = request.app.state.sessions
        sessions.end(cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, httponly=True, samesite="lax")
    return response


@router.get("/")
async def overview_page(request: Request) -> Response:
    if redirect := _login_redirect(request):
        return redirect
    view = overview_view(_service(request), request.app.state.queued_cache)
    return await _page(request, "overview.html", view)


@router.get("/tasks")
async def tasks_page(request: Request, filters: FiltersDep) -> Response:
    if redirect := _login_redirect(request):
        return redirect
    service = _service(request)
    return await _page(
        request,
        "tasks.html",
        tasks_view(service, filters),
        filters=filters,
        states=[state.value for state in TaskState],
        types=sorted(service.config.types),
        agents=[instance.name for instance in await service.store.instances()],
    )


@router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: str) -> Response:
    if redirect := _login_redirect(request):
        return redirect
    service = _service(request)
    task = await find_task(service.store, task_id)
    view = single_task_view(service, task.id)
    ran_before = task.state is TaskState.QUEUED and bool(await service.store.runs.of_task(task.id))
    return await _page(request, "task.html", view, task=task, ran_before=ran_before)


@router.get("/deliveries")
async def deliveries_page(request: Request, filters: FiltersDep) -> Response:
    if redirect := _login_redirect(request):
        return redirect
    view = deliveries_view(_service(request), filters)
    return await _page(
        request, "deliveries.html", view, filters=filters, outcomes=DELIVERY_OUTCOMES
    )


@router.get("/outcomes")
async def outcomes_page(request: Request) -> Response:
    if redirect := _login_redirect(request):
        return redirect
    return await _page(request, "outcomes.html", outcomes_view(_service(request)))


@router.get("/deliveries/{delivery_id}")
async def delivery_page(request: Request, delivery_id: str) -> Response:
    if redirect := _login_redirect(request):
        return redirect
    service = _service(request)
    record = await service.store.intake.get_delivery(delivery_id)
    if record is None:
        raise NotFoundError(f"no delivery with id {delivery_id!r}")
    view = single_delivery_view(service, delivery_id)
    body = _pretty(record.body) if record.pruned_at is None else ""
    return await _page(request, "delivery.html", view, delivery=record, body=body)


# live updates


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _changes(subscription: Subscription, view: View, seconds: float) -> set[str]:
    """The sections that need a new look: those a burst of events touched, or the ticking ones."""
    try:
        first = await asyncio.wait_for(subscription.get(), seconds)
    except TimeoutError:
        return set(view.ticking)
    await asyncio.sleep(COALESCE)
    dirty = view.affected(first)
    while not subscription.queue.empty():
        dirty |= view.affected(subscription.queue.get_nowait())
    if subscription.dropped:
        subscription.dropped = 0
        dirty = set(view.sections)
    return dirty


async def _live(view: View, service: Service, closing: asyncio.Event) -> AsyncIterator[bytes]:
    subscription = service.bus.subscribe(256)
    loop = asyncio.get_running_loop()
    try:
        yield b"retry: 2000\n\n"
        sent: dict[str, str] = {}
        dirty = set(view.sections)
        quiet_since = loop.time()
        while not closing.is_set():
            for name in sorted(dirty):
                try:
                    html = await view.sections[name]()
                except NotFoundError as exc:
                    yield _sse("gone", {"error": str(exc)})
                    return
                if sent.get(name) != html:
                    sent[name] = html
                    yield _sse("section", {"id": name, "html": html})
                    quiet_since = loop.time()
            if loop.time() - quiet_since >= KEEPALIVE:
                yield b": keep-alive\n\n"
                quiet_since = loop.time()
            dirty = await _changes(subscription, view, TICK)
    finally:
        subscription.close()


@router.get("/live", dependencies=[Depends(require_token)])
async def live(
    request: Request,
    filters: FiltersDep,
    view: Literal["overview", "tasks", "task", "deliveries", "delivery", "outcomes"] = "overview",
    id: str | None = None,
) -> StreamingResponse:
    """Server-sent events: `section` events carry {id, html} for a section of the page."""
    service = _service(request)
    chosen: View
    if view in ("task", "delivery") and not id:
        raise InvalidInputError(f"view={view} needs the query parameter 'id'")
    if view == "task" and id:
        if await service.store.get_task(id) is None:
            raise UnknownTaskError(id)
        chosen = single_task_view(service, id)
    elif view == "delivery" and id:
        if await service.store.intake.get_delivery(id) is None:
            raise NotFoundError(f"no delivery with id {id!r}")
        chosen = single_delivery_view(service, id)
    elif view == "tasks":
        chosen = tasks_view(service, filters)
    elif view == "deliveries":
        chosen = deliveries_view(service, filters)
    elif view == "outcomes":
        chosen = outcomes_view(service)
    else:
        chosen = overview_view(service, request.app.state.queued_cache)
    return StreamingResponse(
        _live(chosen, service, request.app.state.closing),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def install(app: FastAPI, server: ServerConfig) -> None:
    """Add the dashboard to the app: its pages, its live stream and its static files."""
    app.state.queued_cache = QueuedCache()
    app.state.sessions = Sessions(server.session_hours * 3600)
    app.state.login_limit = LoginLimit(server.login_failures_per_minute)
    app.include_router(router)
    app.mount("/static", StaticFiles(packages=[("claude_hooks.web", "static")]), name="static")
