"""A discrete-event replay of one type's pool: the service's placement rule in simulated time.

Placement goes through `scheduler.choose`, the function the live pool calls, with the same
snapshot (an instance counts as running from the moment it takes the head of its queue) and the
same session-key rules as pool.py: the instance holding a key gets the key's next task, a key
never runs on two instances at once, and a task of a key waits while another task of that key
runs or is queued ahead of it elsewhere, so a conversation keeps its order.

Policies:
- `seed`: the service today; a task is placed once and never moves.
- `steal`: as `seed`, and an instance with nothing to do takes the oldest task queued on another
  instance of its type whose key is neither running nor queued ahead elsewhere, with the later
  tasks of that key queued on the same instance.
- `shared`: one FIFO queue per type that every free instance takes from: the ideal bound.

Concurrency groups (`Groups`): at most `limit` jobs of one repository (read from the session
key) run at once. The service's rule is head-of-line: a head that does not fit its group waits
and its queue waits behind it; `skip` models the alternative, an instance taking the first job
of its queue that fits. The shared queue always takes the oldest job that fits.

Elastic pools (`Scaling`, `[types.<t>] instances = "min..max"`): the pool starts with `min`
instances and asks the service's own rule (`core/elastic.decide`) after every event and at the
instants a wait reaches `scale_up_wait` or an added instance has idled `scale_down_idle`; an
added instance takes the job that waited longest with its key's later jobs, as the store does.
The service asks every few seconds, so its changes come up to a pass later than here.

Events at the same instant: runs that end come before arrivals, and arrivals keep their order.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from claude_hooks.core.elastic import Act, Scaling, Seat, decide, waits_wanted
from claude_hooks.core.scheduler import Candidate, choose


class Policy(enum.StrEnum):
    SEED = enum.auto()
    STEAL = enum.auto()
    SHARED = enum.auto()


@dataclass(frozen=True, slots=True)
class Job:
    """One task of a workload: when it arrived, for which type and key, and how long it ran."""

    arrival: float
    type: str
    session_key: str
    duration: float
    label: str = ""


@dataclass(frozen=True, slots=True)
class Groups:
    """At most `limit` jobs of one repository running at once; `skip`: an instance whose head
    does not fit takes the next job of its queue that does (else its queue waits)."""

    limit: int
    skip: bool = False


def repository(session_key: str) -> str:
    """The repository of a session key (`<type>:<owner>/<repo>:<number>`), or the key itself."""
    parts = session_key.split(":")
    return parts[1] if len(parts) == 3 else session_key


@dataclass(frozen=True, slots=True)
class Placement:
    """Where and when the simulation ran a job."""

    job: Job
    instance: int
    start: float

    @property
    def wait(self) -> float:
        return self.start - self.job.arrival

    @property
    def finish(self) -> float:
        return self.start + self.job.duration


@dataclass(frozen=True, slots=True)
class Run:
    """The schedule of one type's jobs on `instances` instances under one policy."""

    type: str
    instances: int
    policy: Policy
    placements: list[Placement]  # in the order of the jobs given
    waited_while_idle: int  # jobs that could have started while an instance of the type idled
    longest_queue: int  # the most jobs of the type waiting at one time
    scaling: Scaling | None = None  # an elastic pool's range and timings; None: fixed
    instance_seconds: float = 0.0  # instances alive times seconds, first arrival to last end
    peak: int = 0  # the most instances alive at once
    changes: int = 0  # instances added or retired (elastic)

    @property
    def mean_instances(self) -> float:
        span = _span(self.placements)
        return self.instance_seconds / span if span > 0 else float(self.instances)


def _span(placements: Sequence[Placement]) -> float:
    if not placements:
        return 0.0
    return max(p.finish for p in placements) - min(p.job.arrival for p in placements)


def instance_names(count: int) -> list[str]:
    """Names that sort in index order, as the service sorts its candidates by name."""
    width = len(str(count))
    return [f"{index:0{width}d}" for index in range(count)]


class _Instance:
    __slots__ = ("auto", "idle_since", "index", "name", "queue", "retired", "running")

    def __init__(self, index: int, name: str, auto: bool = False, since: float = 0.0) -> None:
        self.index = index
        self.name = name
        self.queue: deque[int] = deque()
        self.running: int | None = None
        self.auto = auto  # added by the elastic rule
        self.retired = False
        self.idle_since = since  # its last run's end, or when it was added

    @property
    def idle(self) -> bool:
        return self.running is None and not self.queue


# Elastic pools name instances with this many digits, so names sort in the order of creation.
_ELASTIC_WIDTH = 6


class _Simulation:
    def __init__(
        self,
        jobs: Sequence[Job],
        count: int,
        policy: Policy,
        groups: Groups | None,
        scaling: Scaling | None = None,
    ) -> None:
        self.jobs = jobs
        self.policy = policy
        self.groups = groups
        self.scaling = scaling
        self.group_running: dict[str, int] = {}
        names = (
            instance_names(count)
            if scaling is None
            else [f"{i:0{_ELASTIC_WIDTH}d}" for i in range(count)]
        )
        self.instances = [_Instance(i, name) for i, name in enumerate(names)]
        self.live = list(self.instances)  # the instances not retired, in name order
        self.instance_seconds = 0.0
        self.peak = count
        self.changes = 0
        self.wanted = 0  # the waits the elastic rule could use at its last look
        self.cursor = 0
        self.start: list[float | None] = [None] * len(jobs)
        self.where = [-1] * len(jobs)  # the instance a job is queued on or ran on
        self.waiting: dict[int, None] = {}  # queued jobs in arrival order (the shared queue)
        self.key_queue: dict[str, deque[int]] = {}  # each key's queued jobs, in arrival order
        self.running_keys: dict[str, int] = {}  # key -> the instance running it
        self.holders: dict[str, dict[str, int]] = {}  # key -> {instance name: jobs it holds}
        self.finishes: list[tuple[float, int, int]] = []  # (time, job, instance)
        self.waited_while_idle: set[int] = set()
        self.longest_queue = 0

    def run(self) -> None:
        order = sorted(range(len(self.jobs)), key=lambda i: self.jobs[i].arrival)
        next_arrival = 0
        check = _NEVER  # the next instant the elastic rule may decide otherwise
        last: float | None = None
        while next_arrival < len(order) or self.finishes:
            now = min(
                self.jobs[order[next_arrival]].arrival if next_arrival < len(order) else _NEVER,
                self.finishes[0][0] if self.finishes else _NEVER,
                check,
            )
            if last is not None:
                self.instance_seconds += len(self.live) * (now - last)
            last = now
            while self.finishes and self.finishes[0][0] <= now:
                _, job, instance = heapq.heappop(self.finishes)
                self._finish(job, self.instances[instance], now)
                self._settle(now)
            while next_arrival < len(order) and self.jobs[order[next_arrival]].arrival <= now:
                self._arrive(order[next_arrival], now)
                next_arrival += 1
                self._settle(now)
            if self.scaling is not None:
                self._scale(self.scaling, now)
                check = self._next_check(self.scaling, now)
            self.longest_queue = max(self.longest_queue, len(self.waiting))
            self._note_needless_waits()

    # the elastic rule

    def _takeable(self, job: int) -> bool:
        """Another instance could start it now (`stealing.TAKEABLE`): its key is free and it
        is not the head of an idle instance's queue."""
        if not self._key_free(job):
            return False
        where = self.where[job]
        if where < 0:  # the shared queue
            return True
        instance = self.instances[where]
        return instance.running is not None or instance.queue[0] != job

    def _scale(self, scaling: Scaling, now: float) -> None:
        seats = [
            Seat(i.name, i.auto, True, i.running is not None, len(i.queue), i.idle_since)
            for i in self.live
        ]
        # As the store: only the longest waits the rule can use, and none while it cannot add.
        self.wanted = waits_wanted(scaling, seats)
        waits: list[float] = []
        if self.wanted:
            for job in self.waiting:  # in arrival order: the longest waits first
                wait = now - self.jobs[job].arrival
                if wait < scaling.scale_up_wait or len(waits) == self.wanted:
                    break
                if self._takeable(job):
                    waits.append(wait)
        verdict = decide(self.jobs[0].type, scaling, seats, waits, now)
        if verdict.act is Act.NOTHING:
            return
        self.changes += 1
        if verdict.act is Act.RETIRE:
            for instance in self.live:
                instance.retired = instance.name in verdict.names
            self.live = [i for i in self.live if not i.retired]
            return
        for _ in verdict.names:
            index = len(self.instances)
            added = _Instance(index, f"{index:0{_ELASTIC_WIDTH}d}", auto=True, since=now)
            self.instances.append(added)
            self.live.append(added)
            oldest = next((j for j in self.waiting if self._takeable(j)), None)
            if oldest is not None and self.policy is not Policy.SHARED:
                self._steal(oldest, added)
                added.queue.appendleft(oldest)
        self.peak = max(self.peak, len(self.live))
        self._settle(now)

    def _next_check(self, scaling: Scaling, now: float) -> float:
        """The next instant a wait reaches `scale_up_wait` or an added instance has idled
        `scale_down_idle`: between events nothing else changes what the rule says."""
        times = [i.idle_since + scaling.scale_down_idle for i in self.live if i.auto and i.idle]
        if self.wanted:  # else no wait can add an instance before the next event
            due = (
                self.jobs[j].arrival + scaling.scale_up_wait
                for j in self.waiting
                if self.jobs[j].arrival + scaling.scale_up_wait > now and self._takeable(j)
            )
            times.append(next(due, _NEVER))  # the waiting jobs are in arrival order
        return min((t for t in times if t > now), default=_NEVER)

    # events

    def _arrive(self, job: int, now: float) -> None:
        key = self.jobs[job].session_key
        self.waiting[job] = None
        self.key_queue.setdefault(key, deque()).append(job)
        if self.policy is Policy.SHARED:
            if self._startable(job):
                snapshot = [Candidate(i.name, i.running is not None, 0) for i in self.live]
                choice = choose(snapshot, self.cursor)
                chosen = self.live[choice.index]
                if chosen.running is None:
                    self.cursor = choice.cursor
                    self._start(job, chosen, now)
            return
        holders = self.holders.get(key)
        holder = next((i.name for i in self.live if holders and i.name in holders), None)
        snapshot = [
            Candidate(i.name, i.running is not None or bool(i.queue), len(i.queue))
            for i in self.live
        ]
        choice = choose(snapshot, self.cursor, holder)
        self.cursor = choice.cursor
        chosen = self.live[choice.index]
        chosen.queue.append(job)
        self.where[job] = chosen.index
        self._hold(key, chosen.name)

    def _finish(self, job: int, instance: _Instance, now: float) -> None:
        key = self.jobs[job].session_key
        instance.running = None
        instance.idle_since = now
        del self.running_keys[key]
        self.group_running[repository(key)] -= 1
        if self.policy is not Policy.SHARED:
            self._release(key, instance.name)

    def _settle(self, now: float) -> None:
        """Start whatever can start now: queue heads, then steals or the shared queue."""
        moved = True
        while moved:
            moved = False
            for instance in self.live:
                if instance.running is None and instance.queue:
                    job = self._next_of(instance)
                    if job is not None:
                        instance.queue.remove(job)
                        self._start(job, instance, now)
                        moved = True
            if self.policy is Policy.SEED:
                continue
            for instance in self.live:
                if instance.idle:
                    job = next((j for j in self.waiting if self._startable(j)), None)
                    if job is None:
                        break
                    if self.policy is Policy.STEAL:
                        self._steal(job, instance)
                    self._start(job, instance, now)
                    moved = True

    def _next_of(self, instance: _Instance) -> int | None:
        """The job of its queue an instance starts now: the head, or under `skip` the first
        that fits its group when the head waits only for its group."""
        head = instance.queue[0]
        if self._startable(head):
            return head
        if self.groups is None or not self.groups.skip or not self._key_free(head):
            return None
        return next((j for j in instance.queue if self._startable(j)), None)

    def _steal(self, job: int, thief: _Instance) -> None:
        """Move the job, and its key's later tasks on the same instance, to the idle thief.

        The key's tasks stay together: its next tasks go to the instance that holds it, and no
        instance waits with a task whose key runs elsewhere.
        """
        victim = self.instances[self.where[job]]
        key = self.jobs[job].session_key
        moving = [j for j in victim.queue if self.jobs[j].session_key == key]
        victim.queue = deque(j for j in victim.queue if self.jobs[j].session_key != key)
        for moved in moving:
            self._release(key, victim.name)
            self._hold(key, thief.name)
            self.where[moved] = thief.index
        thief.queue.extend(moving[1:])

    def _start(self, job: int, instance: _Instance, now: float) -> None:
        key = self.jobs[job].session_key
        del self.waiting[job]
        self.key_queue[key].popleft()
        self.running_keys[key] = instance.index
        group = repository(key)
        self.group_running[group] = self.group_running.get(group, 0) + 1
        instance.running = job
        self.where[job] = instance.index
        self.start[job] = now
        heapq.heappush(self.finishes, (now + self.jobs[job].duration, job, instance.index))

    # session keys

    def _startable(self, job: int) -> bool:
        return self._key_free(job) and self._fits(job)

    def _key_free(self, job: int) -> bool:
        key = self.jobs[job].session_key
        return key not in self.running_keys and self.key_queue[key][0] == job

    def _fits(self, job: int) -> bool:
        if self.groups is None:
            return True
        running = self.group_running.get(repository(self.jobs[job].session_key), 0)
        return running < self.groups.limit

    def _hold(self, key: str, name: str) -> None:
        holders = self.holders.setdefault(key, {})
        holders[name] = holders.get(name, 0) + 1

    def _release(self, key: str, name: str) -> None:
        holders = self.holders[key]
        holders[name] -= 1
        if not holders[name]:
            del holders[name]
        if not holders:
            del self.holders[key]

    def _note_needless_waits(self) -> None:
        """Until the next event, every startable waiting job waits beside an idle instance."""
        if self.waiting and any(i.idle for i in self.live):
            self.waited_while_idle.update(j for j in self.waiting if self._startable(j))


_NEVER = float("inf")


def simulate(
    jobs: Sequence[Job],
    instances: int,
    policy: Policy,
    groups: Groups | None = None,
    scaling: Scaling | None = None,
) -> Run:
    """Schedule jobs of one type on `instances` instances, starting from an empty pool; with
    `scaling`, an elastic pool of `scaling.low` instances to start with (`instances` unused)."""
    if scaling is not None:
        instances = scaling.low
    if instances < 1:
        raise ValueError("a pool needs at least one instance")
    types = {job.type for job in jobs}
    if len(types) > 1:
        raise ValueError(f"simulate() takes the jobs of one type, not {sorted(types)}")
    if groups is not None and groups.limit < 1:
        raise ValueError("a group lets at least one job run")
    simulation = _Simulation(jobs, instances, policy, groups, scaling)
    simulation.run()
    placements = []
    for index, job in enumerate(jobs):
        start = simulation.start[index]
        if start is None:
            raise AssertionError(f"job {index} never ran")
        placements.append(Placement(job, simulation.where[index], start))
    return Run(
        type=next(iter(types), ""),
        instances=instances,
        policy=policy,
        placements=placements,
        waited_while_idle=len(simulation.waited_while_idle),
        longest_queue=simulation.longest_queue,
        scaling=scaling,
        instance_seconds=simulation.instance_seconds
        if scaling is not None
        else instances * _span(placements),
        peak=simulation.peak,
        changes=simulation.changes,
    )
