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

Events at the same instant: runs that end come before arrivals, and arrivals keep their order.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

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


def instance_names(count: int) -> list[str]:
    """Names that sort in index order, as the service sorts its candidates by name."""
    width = len(str(count))
    return [f"{index:0{width}d}" for index in range(count)]


class _Instance:
    __slots__ = ("index", "name", "queue", "running")

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.queue: deque[int] = deque()
        self.running: int | None = None

    @property
    def idle(self) -> bool:
        return self.running is None and not self.queue


class _Simulation:
    def __init__(
        self, jobs: Sequence[Job], count: int, policy: Policy, groups: Groups | None
    ) -> None:
        self.jobs = jobs
        self.policy = policy
        self.groups = groups
        self.group_running: dict[str, int] = {}
        self.instances = [_Instance(i, name) for i, name in enumerate(instance_names(count))]
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
        while next_arrival < len(order) or self.finishes:
            now = min(
                self.jobs[order[next_arrival]].arrival if next_arrival < len(order) else _NEVER,
                self.finishes[0][0] if self.finishes else _NEVER,
            )
            while self.finishes and self.finishes[0][0] <= now:
                _, job, instance = heapq.heappop(self.finishes)
                self._finish(job, self.instances[instance])
                self._settle(now)
            while next_arrival < len(order) and self.jobs[order[next_arrival]].arrival <= now:
                self._arrive(order[next_arrival], now)
                next_arrival += 1
                self._settle(now)
            self.longest_queue = max(self.longest_queue, len(self.waiting))
            self._note_needless_waits()

    # events

    def _arrive(self, job: int, now: float) -> None:
        key = self.jobs[job].session_key
        self.waiting[job] = None
        self.key_queue.setdefault(key, deque()).append(job)
        if self.policy is Policy.SHARED:
            if self._startable(job):
                snapshot = [Candidate(i.name, i.running is not None, 0) for i in self.instances]
                choice = choose(snapshot, self.cursor)
                chosen = self.instances[choice.index]
                if chosen.running is None:
                    self.cursor = choice.cursor
                    self._start(job, chosen, now)
            return
        holders = self.holders.get(key)
        holder = next((i.name for i in self.instances if holders and i.name in holders), None)
        snapshot = [
            Candidate(i.name, i.running is not None or bool(i.queue), len(i.queue))
            for i in self.instances
        ]
        choice = choose(snapshot, self.cursor, holder)
        self.cursor = choice.cursor
        chosen = self.instances[choice.index]
        chosen.queue.append(job)
        self.where[job] = chosen.index
        self._hold(key, chosen.name)

    def _finish(self, job: int, instance: _Instance) -> None:
        key = self.jobs[job].session_key
        instance.running = None
        del self.running_keys[key]
        self.group_running[repository(key)] -= 1
        if self.policy is not Policy.SHARED:
            self._release(key, instance.name)

    def _settle(self, now: float) -> None:
        """Start whatever can start now: queue heads, then steals or the shared queue."""
        moved = True
        while moved:
            moved = False
            for instance in self.instances:
                if instance.running is None and instance.queue:
                    job = self._next_of(instance)
                    if job is not None:
                        instance.queue.remove(job)
                        self._start(job, instance, now)
                        moved = True
            if self.policy is Policy.SEED:
                continue
            for instance in self.instances:
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
        if self.waiting and any(i.idle for i in self.instances):
            self.waited_while_idle.update(j for j in self.waiting if self._startable(j))


_NEVER = float("inf")


def simulate(
    jobs: Sequence[Job], instances: int, policy: Policy, groups: Groups | None = None
) -> Run:
    """Schedule jobs of one type on `instances` instances, starting from an empty pool."""
    if instances < 1:
        raise ValueError("a pool needs at least one instance")
    types = {job.type for job in jobs}
    if len(types) > 1:
        raise ValueError(f"simulate() takes the jobs of one type, not {sorted(types)}")
    if groups is not None and groups.limit < 1:
        raise ValueError("a group lets at least one job run")
    simulation = _Simulation(jobs, instances, policy, groups)
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
    )
