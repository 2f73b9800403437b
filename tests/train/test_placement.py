"""Trainer placement groups: which groups are orphaned, whose controllers a process started, and the watchdog's
decision (can a PENDING group ever be placed?) on hand-made GCS tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.commands.tune import load_space
from harness.core.errors import SpecError
from harness.train.placement import Actor, Group, Tables, _hex, starvation

TRIAL_WORKER = "aa" * 28
CPU1 = ({"CPU": 1.0},)


def _tables(*groups: Group, actors: tuple[Actor, ...] = ()) -> Tables:
    return Tables(list(groups), list(actors))


def test_orphaned_means_live_made_by_an_actor_that_died() -> None:
    assert Group("a", "CREATED", CPU1, creator="c1", creator_dead=True).orphaned
    assert not Group("a", "CREATED", CPU1, creator="c1", creator_dead=False).orphaned  # its trainer may run
    assert not Group("a", "REMOVED", CPU1, creator="c1", creator_dead=True).orphaned
    assert not Group("a", "CREATED", CPU1, creator="", creator_dead=True).orphaned  # a driver's (Tune's own)
    assert not Group("a", "CREATED", CPU1, creator="c1", creator_dead=True, detached=True).orphaned


def test_unset_ids_read_as_empty() -> None:
    assert _hex(b"") == "" and _hex(b"\xff" * 16) == ""
    assert _hex(b"\x01\xff") == "01ff"


def test_controllers_of_a_process_are_the_train_controllers_it_owns() -> None:
    tables = _tables(actors=(Actor("c1", "DEAD", "TrainController", owner_worker=TRIAL_WORKER),
                             Actor("c2", "ALIVE", "TrainController", owner_worker="bb" * 28),
                             Actor("q", "ALIVE", "_QueueActor", owner_worker=TRIAL_WORKER)))
    assert tables.controllers_of(TRIAL_WORKER) == {"c1"}
    assert tables.controllers_of("") == set()


def test_a_group_held_by_a_dead_trainer_does_not_starve_the_next() -> None:
    """The issue's deadlock: 2 CPUs, a stopped trial's 1-CPU group left CREATED by a dead controller, Tune's
    0.1-CPU trial group, and the next trainer's 1-CPU group PENDING: removable, so not starvation."""
    leaked = Group("leak", "CREATED", CPU1, creator="c1", creator_dead=True)
    trial = Group("tune", "CREATED", ({"CPU": 0.1},))
    pending = Group("next", "PENDING", CPU1, creator="c2")
    assert starvation(pending, _tables(leaked, trial, pending), {"CPU": 0.9}) is None


def test_a_group_with_work_running_in_it_will_be_freed() -> None:
    busy = Group("other", "CREATED", CPU1, creator="c1")
    pending = Group("next", "PENDING", CPU1, creator="c2")
    actors = (Actor("w1", "ALIVE", "RayTrainWorker", placement_group="other"),)
    assert starvation(pending, _tables(busy, pending, actors=actors), {"CPU": 0.9}) is None


def test_enough_free_resources_is_no_starvation() -> None:
    pending = Group("next", "PENDING", ({"CPU": 1.0}, {"CPU": 1.0}), creator="c2")
    assert starvation(pending, _tables(pending), {"CPU": 2.0}) is None


def test_an_idle_group_of_a_live_creator_starves_the_next_and_is_named() -> None:
    """A group whose creator lives on but has no live actor in it (a dead worker was in it): nothing will free
    it, so the message names it with its bundles and state, and not the groups that hold no CPU."""
    idle = Group("idle1", "CREATED", ({"CPU": 1.0},), creator="c1")
    gpu = Group("gpu1", "CREATED", ({"GPU": 1.0},), creator="c3")
    trial = Group("tune1", "CREATED", ({"CPU": 0.1},))
    pending = Group("next1", "PENDING", ({"CPU": 1.0},), creator="c2")
    # The trial waiting for `pending` runs in tune1 and started c2: its group is not freed while it waits.
    actors = (Actor("w1", "DEAD", "RayTrainWorker", placement_group="idle1"),
              Actor("t1", "ALIVE", "ImplicitFunc", worker=TRIAL_WORKER, placement_group="tune1"),
              Actor("c2", "ALIVE", "TrainController", owner_worker=TRIAL_WORKER))
    why = starvation(pending, _tables(idle, gpu, trial, pending, actors=actors), {"CPU": 0.9, "GPU": 0.0})
    assert why is not None
    assert "next1 (PENDING, bundles [{CPU: 1}])" in why
    assert "CPU 1 (free 0.9)" in why
    assert "idle1 (CREATED, bundles [{CPU: 1}]), no live actor in it" in why
    assert "tune1 (CREATED, bundles [{CPU: 0.1}])" in why
    assert "gpu1" not in why


def test_a_request_larger_than_the_cluster_starves() -> None:
    pending = Group("big", "PENDING", ({"CPU": 4.0},), creator="c2")
    why = starvation(pending, _tables(pending), {"CPU": 2.0})
    assert why is not None and "no placement group" in why


def test_pending_timeout_is_a_space_field_and_must_be_positive(tmp_path: Path) -> None:
    space = {"objectives": [{"metric": "fq", "split": "f"}], "params": {"train.lr": {"uniform": [0.001, 0.01]}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert load_space(path).trainer_pending_timeout_s == 300
    path.write_text(yaml.safe_dump({**space, "trainer_pending_timeout_s": 0}))
    with pytest.raises(SpecError, match="trainer_pending_timeout_s"):
        load_space(path)
