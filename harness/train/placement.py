"""The placement groups of Ray Train trainers: removed for certain when their trainer ends, and a watchdog for a
trainer that waits for CPUs that will never come.

Ray keeps a placement group until the actor that created it AND its job are gone. A trainer's workers' group is
created by its Ray Train controller, an actor owned by the process that called `fit` (a Tune trial): when a trial
is stopped, the controller dies with it but the job (the driver) lives on, so the group keeps its CPUs. Ray
Train's own cleaner (a detached actor polling the dashboard's State API) misses it when there is no dashboard or
when the controller dies before registering its group, and removing a group while its controller still lives
only makes the controller start a new worker group in a new group. So here a trainer is released in order:
stop its controllers (no restart), wait until Ray reports them dead, remove every group they created, and wait
until Ray reports each group REMOVED. Every harness trainer is released so when its `fit` ends
(`harness.train.ray_run`), and a Tune trial's when the trial ends, so harness's trainers run without Ray Train's
cleaner.

Which actor created a group, and which process owns an actor, are only in the GCS tables (Ray's public
`placement_group_table` leaves them out); `_gcs_tables` is the one place that reads them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from harness.core.errors import HarnessError

#: How long a release waits for Ray to report the controllers dead and their groups REMOVED.
RELEASE_TIMEOUT_S = 60.0
#: How often the release and the watchdog read the tables.
POLL_S = 0.2
WATCHDOG_POLL_S = 2.0
#: States in which a group holds (or is about to hold) its bundles' resources.
HOLDING = ("CREATED", "PREPARED", "RESCHEDULING")
#: The class of the actor that creates a Ray Train trainer's worker group.
CONTROLLER_CLASS = "TrainController"


class PlacementGroupError(HarnessError):
    """A trainer's placement group was not removed in time, or can never be placed: the message names them."""

    exit_code = 1


@dataclass(frozen=True)
class Group:
    """One placement group as Ray's GCS has it."""

    id: str
    state: str  #: PENDING, PREPARED, CREATED, RESCHEDULING or REMOVED
    bundles: tuple[dict[str, float], ...] = ()
    creator: str = ""  #: the actor that created it ("" for a driver)
    creator_dead: bool = False
    detached: bool = False
    job: str = ""

    @property
    def live(self) -> bool:
        return self.state != "REMOVED"

    @property
    def orphaned(self) -> bool:
        """Created by an actor that is dead: nothing will ever use or remove it (Ray waits for the job too)."""
        return self.live and not self.detached and bool(self.creator) and self.creator_dead

    def demand(self) -> dict[str, float]:
        """The resources of all its bundles together."""
        return _total(self.bundles)

    def describe(self) -> str:
        bundles = ", ".join("{" + ", ".join(f"{k}: {v:g}" for k, v in b.items()) + "}" for b in self.bundles)
        return f"{self.id} ({self.state}, bundles [{bundles}])"


@dataclass(frozen=True)
class Actor:
    """One actor as Ray's GCS has it."""

    id: str
    state: str  #: DEPENDENCIES_UNREADY, PENDING_CREATION, ALIVE, RESTARTING or DEAD
    class_name: str = ""
    owner_worker: str = ""  #: the worker process that created it (its fate is shared with it)
    worker: str = ""  #: its own worker process
    placement_group: str = ""

    @property
    def alive(self) -> bool:
        return self.state != "DEAD"


@dataclass
class Tables:
    """The GCS's placement groups and actors at one moment."""

    groups: list[Group] = field(default_factory=list)
    actors: list[Actor] = field(default_factory=list)

    def controllers_of(self, owner_worker: str) -> set[str]:
        """The Ray Train controllers (alive or dead) that a worker process started."""
        return {a.id for a in self.actors if a.owner_worker == owner_worker and CONTROLLER_CLASS in a.class_name}

    def busy(self, group: Group) -> bool:
        """Whether a live actor runs in the group (its work will end and free it)."""
        return any(a.alive and a.placement_group == group.id for a in self.actors)


def _hex(raw: bytes) -> str:
    """An id's hex, or "" for an unset (empty or nil: all 0xff) id."""
    return "" if not raw or set(raw) == {0xFF} else raw.hex()


def _total(bundles: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


def _gcs_tables() -> Tables:
    """Every placement group (with its creator) and actor (with its owner and group) of the Ray instance."""
    from google.protobuf.json_format import MessageToDict
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    states = {v.number: v.name for v in gcs_pb2.PlacementGroupTableData.PlacementGroupState.DESCRIPTOR.values}
    actor_states = {v.number: v.name for v in gcs_pb2.ActorTableData.ActorState.DESCRIPTOR.values}
    accessor = state._connect_and_get_accessor()
    groups = []
    for raw in accessor.get_placement_group_table():
        data = gcs_pb2.PlacementGroupTableData.FromString(raw)
        bundles = tuple({k: float(v) for k, v in MessageToDict(b).get("unitResources", {}).items()}
                        for b in data.bundles)
        groups.append(Group(id=data.placement_group_id.hex(), state=states.get(data.state, "REMOVED"),
                            bundles=bundles, creator=_hex(data.creator_actor_id), creator_dead=data.creator_actor_dead,
                            detached=data.is_detached, job=data.creator_job_id.hex()))
    actors = []
    for raw in accessor.get_actor_table(None, None):
        data = gcs_pb2.ActorTableData.FromString(raw)
        actors.append(Actor(id=data.actor_id.hex(), state=actor_states.get(data.state, "DEAD"),
                            class_name=data.class_name, owner_worker=_hex(data.owner_address.worker_id),
                            worker=_hex(data.address.worker_id), placement_group=_hex(data.placement_group_id)))
    return Tables(groups, actors)


def _kill(actor_id: str) -> None:
    """Kill an actor by id, with no restart; only in the process that owns it (which has its handle)."""
    import ray
    from ray._private.worker import global_worker

    try:
        global_worker.core_worker.kill_actor(ray.ActorID.from_hex(actor_id), True)
    except Exception:  # noqa: BLE001, S110 - dead already
        pass


def _remove(group_id: str) -> None:
    from ray import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group_id))))
    except Exception:  # noqa: BLE001, S110 - removed meanwhile; the confirmation below decides
        pass


def worker_of_actor(actor_id: str) -> str:
    """The worker process (id) an actor runs in, or "" when Ray does not know it (yet)."""
    return next((a.worker for a in _gcs_tables().actors if a.id == actor_id), "")


def current_worker() -> str:
    """This process's Ray worker id."""
    import ray

    return ray.get_runtime_context().get_worker_id()


def placement_group_id() -> str | None:
    """The placement group this process runs in (a trainer's worker: its worker group's), or None."""
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    return pg.id.hex() if pg is not None else None


def _wait(done: Any, timeout_s: float) -> Tables:
    """Read the tables until `done(tables)` holds or `timeout_s` passes; the last tables read."""
    deadline = time.monotonic() + timeout_s
    while True:
        tables = _gcs_tables()
        if done(tables) or time.monotonic() >= deadline:
            return tables
        time.sleep(POLL_S)


def remove_groups(group_ids: Iterable[str], timeout_s: float = RELEASE_TIMEOUT_S) -> list[str]:
    """Remove placement groups and wait until Ray reports each REMOVED; the ids removed here. Raises
    PlacementGroupError naming the groups still there after `timeout_s`."""
    wanted = set(group_ids)
    tables = _gcs_tables()
    removed = [g.id for g in tables.groups if g.id in wanted and g.live]
    for group_id in removed:
        _remove(group_id)
    tables = _wait(lambda t: not any(g.live for g in t.groups if g.id in wanted), timeout_s)
    left = [g for g in tables.groups if g.id in wanted and g.live]
    if left:
        raise PlacementGroupError(f"Ray did not remove placement group(s) within {timeout_s:g} s: "
                                  + "; ".join(g.describe() for g in left))
    return removed


def release_orphans(timeout_s: float = RELEASE_TIMEOUT_S) -> list[str]:
    """Remove the groups of this job whose creator is dead (a stopped trial's trainer), confirmed REMOVED."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    return remove_groups([g.id for g in _gcs_tables().groups if g.orphaned and g.job == job], timeout_s)


def release_trainers(owner_worker: str, timeout_s: float = RELEASE_TIMEOUT_S) -> list[str]:
    """Stop every Ray Train controller that a worker process (a Tune trial) started, wait until Ray reports them
    dead, then remove every placement group they created, confirmed REMOVED; the ids removed here. Only the
    owning process can kill its controllers; any other kills that process first (they die with it)."""
    if not owner_worker:
        return []
    return release_controllers(_gcs_tables().controllers_of(owner_worker), timeout_s)


def release_controllers(controllers: set[str], timeout_s: float = RELEASE_TIMEOUT_S) -> list[str]:
    """Stop these Ray Train controllers (owned by this process), wait until Ray reports them dead, then remove
    every placement group they created, confirmed REMOVED; the ids removed here.

    The order matters: a controller that outlives its group starts a new worker group in a new group."""
    if not controllers:
        return []
    deadline = time.monotonic() + timeout_s
    for actor in _gcs_tables().actors:
        if actor.id in controllers and actor.alive:
            _kill(actor.id)
    tables = _wait(lambda t: not any(a.alive for a in t.actors if a.id in controllers), timeout_s)
    alive = [a.id for a in tables.actors if a.id in controllers and a.alive]
    if alive:
        raise PlacementGroupError(f"Ray did not stop trainer controller(s) {', '.join(alive)} within {timeout_s:g} s")
    groups = [g.id for g in tables.groups if g.creator in controllers and g.live]
    return remove_groups(groups, max(deadline - time.monotonic(), POLL_S))


def starvation(pending: Group, tables: Tables, available: Mapping[str, float]) -> str | None:
    """Why a PENDING group can never be placed, naming the groups that hold what it lacks; None while free
    resources plus those of groups that will be freed could still satisfy it. Groups that will be freed:
    orphaned ones (removed here) and busy ones (a live actor runs in them, and its work ends), except those of
    the process waiting for this group (the Tune trial whose trainer asks for it). Counted over the whole
    cluster, so None can still mean it never fits one node."""
    waiting = _waiting_groups(pending, tables)
    holders = [g for g in tables.groups if g.id != pending.id and g.state in HOLDING]
    releasable = _total(b for g in holders if g.orphaned or (tables.busy(g) and g.id not in waiting)
                        for b in g.bundles)
    short = {r: need for r, need in pending.demand().items()
             if need > available.get(r, 0.0) + releasable.get(r, 0.0) + 1e-9}
    if not short:
        return None
    named = [g for g in holders if set(g.demand()) & set(short)]
    lacks = ", ".join(f"{r} {need:g} (free {available.get(r, 0.0):g})" for r, need in short.items())
    held = "; ".join(f"{g.describe()}{', no live actor in it' if not tables.busy(g) else ''}" for g in named)
    return (f"trainer placement group {pending.describe()} can never be placed: it needs {lacks}, and the "
            f"resources are held by {held or 'no placement group (tasks or actors outside any group)'}")


def _waiting_groups(pending: Group, tables: Tables) -> set[str]:
    """The groups of the process that started `pending`'s creator (it waits for `pending`, so they stay)."""
    owner = next((a.owner_worker for a in tables.actors if a.id == pending.creator), "")
    return {a.placement_group for a in tables.actors if owner and a.worker == owner and a.placement_group}


class PendingWatchdog:
    """Watches the trainer placement groups a worker process's controllers ask for; when they have waited
    (PENDING) longer than `timeout_s` and `starvation` says they never can be placed, records why and stops
    those controllers, so the trainer's `fit` fails instead of waiting forever. Meanwhile it removes orphaned
    groups of the job (a stopped trial's), whose resources the pending group may be waiting for."""

    def __init__(self, owner_worker: str, timeout_s: float, poll_s: float = WATCHDOG_POLL_S) -> None:
        self.owner_worker, self.timeout_s, self.poll_s = owner_worker, timeout_s, poll_s
        self.message: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-pending-watchdog", daemon=True)

    def __enter__(self) -> PendingWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_s + 10)

    def _run(self) -> None:
        import ray

        waiting_since: float | None = None
        while not self._stop.wait(self.poll_s):
            try:
                release_orphans()
                tables = _gcs_tables()
                mine = tables.controllers_of(self.owner_worker)
                if any(g.creator in mine and g.state in HOLDING for g in tables.groups):
                    waiting_since = None  # placed
                    continue
                pending = [g for g in tables.groups if g.creator in mine and g.state == "PENDING"]
                if not pending:  # not asked yet, or between two tries (Ray Train retries with a new group)
                    continue
                now = time.monotonic()
                waiting_since = waiting_since or now
                if now - waiting_since < self.timeout_s:
                    continue
                why = starvation(pending[0], tables, ray.available_resources())
                if why:
                    self.message = f"{why} (waited {now - waiting_since:.0f} s)"
                    for controller in mine:
                        _kill(controller)
                    return
            except Exception:  # noqa: BLE001, S112 - Ray busy or shutting down: look again next time
                continue


@contextmanager
def guarded_trainer(pending_timeout_s: float) -> Iterator[PendingWatchdog]:
    """Around a trainer's `fit` in a Tune trial: first remove groups that stopped trials left, watch the
    trainer's group while it waits (`PendingWatchdog`), and, however the block ends, release every trainer this
    process started (`release_trainers`). A trainer the watchdog stopped raises PlacementGroupError."""
    owner = current_worker()
    release_orphans()
    try:
        with PendingWatchdog(owner, pending_timeout_s) as watchdog:
            try:
                yield watchdog
            except Exception as err:
                if watchdog.message:
                    raise PlacementGroupError(watchdog.message) from err
                raise
    finally:
        release_trainers(owner)
