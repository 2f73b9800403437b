"""Ray start-up and shut-down for the driver, in one place: one local instance (or a cluster) per process."""

from __future__ import annotations

import os

from harness.core.console import quiet_libraries
from harness.core.signals import handle_sigterm

_local_instance = False


#: How often Ray Train's controller polls its workers (Ray's default is 2 s). Every `ray.train.report`
#: waits for that poll, and so does the worker group's start, so a short interval cuts both.
HEALTH_CHECK_INTERVAL_S = "0.2"
#: Ray Train's preemption watcher (an actor per trainer that polls Ray for nodes being drained) is switched off on
#: a local instance, which has no other node to drain: one process less per trainer (about 1.5 s of CPU each).
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
#: Set to 1 to start a local Ray instance with its dashboard (http://127.0.0.1:8265), to watch a run there.
DASHBOARD_ENV = "HARNESS_RAY_DASHBOARD"
#: Set to 1 in every worker process of a local instance `ensure_ray` started (through the instance's runtime env),
#: so that code running in a Ray worker (a Tune trial that starts a trainer) knows it too: `on_local_instance`.
LOCAL_INSTANCE_ENV = "HARNESS_RAY_LOCAL_INSTANCE"


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` (or RAY_ADDRESS), or start a local Ray instance, once per process; `num_cpus` sets
    the local instance's logical CPUs (default: the machine's), e.g. more, to overlap trainers' start-ups."""
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    if ray.is_initialized():
        return
    global _local_instance
    quiet_libraries()  # Ray's token notice at init (unless verbose)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        _local_instance = True
        os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
        # Worker logs stay in Ray's session logs; failures come back with their traceback in the result.
        # Each worker process hides the library noise the driver hides (harness.core.console) before it runs a task.
        # No dashboard unless asked for (DASHBOARD_ENV): harness releases its trainers' placement groups itself
        # (harness.train.placement), and the dashboard's processes cost a local instance 2.5 s of CPU at start,
        # 2.2 s at shut-down and 1.7 s a minute in between (measured on 2 cores).
        ray.init(include_dashboard=os.environ.get(DASHBOARD_ENV, "0") == "1", log_to_driver=False,
                 configure_logging=False, num_cpus=num_cpus,
                 runtime_env={"worker_process_setup_hook": "harness.core.console.quiet_libraries",
                              "env_vars": {LOCAL_INSTANCE_ENV: "1"}})
    handle_sigterm()  # ray.init replaced it with Ray's own (exit at once, no clean-up)


def stop_ray() -> None:
    """Disconnect from Ray (a local instance started here stops, with every worker; a cluster's drops the
    actors this driver owns). Nothing when Ray was never started."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    global _local_instance
    _local_instance = False


def started_locally() -> bool:
    """Whether `ensure_ray` started a local Ray instance (rather than joining a cluster) in this process."""
    return _local_instance


def on_local_instance() -> bool:
    """Whether this process runs on a local instance a harness driver started (it started it, or it is one of its
    Ray workers): one machine, no autoscaler to ask for nodes."""
    return _local_instance or os.environ.get(LOCAL_INSTANCE_ENV) == "1"
