"""Starting the private, local Ray instance each Ray-based server runs on."""

from __future__ import annotations

import logging

#: Logical CPUs declared to Ray. Every actor and deployment here asks for 0 CPUs, so this only
#: bounds Ray's own default worker pool; the machine has 2 cores.
RAY_NUM_CPUS = 2


def start_ray() -> None:
    import ray

    # address="local": never join a cluster recorded by an earlier run. log_to_driver=False: the
    # replicas still log to their files, but this driver does not spend CPU relaying those lines.
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=RAY_NUM_CPUS,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
