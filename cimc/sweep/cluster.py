"""The Dask cluster a sweep runs on: a LocalCluster by default, or an existing one by its scheduler's address.

cimc does not schedule: ``dask.distributed`` does, on a laptop (LocalCluster, one
single-threaded worker process per CPU unless told otherwise) as on a cluster started by
``dask scheduler`` and ``dask worker tcp://HOST:8786``. Workers are single-threaded
processes so that each chip run has one core, as the simulator is written for (and Dask
sets OMP/OpenBLAS/MKL threads to 1 in worker processes it spawns).

Dask's nanny also sets ``MALLOC_TRIM_THRESHOLD_=65536`` in the workers it spawns (to give
memory back to the system sooner). glibc then stops raising its mmap threshold, so every
large numpy temporary of a time step is a fresh mmap, page faults and munmap: measured on
KWS (600 clips), 0.55 s per chip run in such a worker against 0.20-0.25 s in a plain
process, a thread of it, a spawned process, or a worker without the variable. The
LocalCluster here leaves the variable unset; for a cluster of your own, set
``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null`` in the workers' Dask
configuration (README).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from cimc.diagnostics import CimcError

CONNECT_TIMEOUT_S = 10
MALLOC_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"  # see the module docstring


def _distributed():  # noqa: ANN202
    try:
        import distributed
    except ImportError:
        raise CimcError("cimc sweep needs Dask: pip install 'cimc[sweep]' (dask[distributed])") from None
    return distributed


def check_available() -> None:
    """Refuse the command before any work when Dask is not installed."""
    _distributed()


@contextlib.contextmanager
def open_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[object]:
    """A ``distributed.Client``: on the cluster at ``scheduler``, or on a LocalCluster of ``workers`` processes
    (default: the CPU count), which is shut down on exit."""
    distributed = _distributed()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError, TypeError) as e:
            raise CimcError(f"cannot reach the Dask scheduler at {scheduler}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        with client:
            yield client
        return
    import dask

    # The dashboard on a free port: two sweeps (or another Dask user) on one machine never collide.
    with dask.config.set({MALLOC_TRIM_KEY: None}), \
            distributed.LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                                     dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def dashboard_link(client: object) -> str | None:
    """The dashboard's address when the scheduler serves one (its pages need bokeh, which Dask does not require)."""
    if "dashboard" not in client.scheduler_info().get("services", {}):  # type: ignore[attr-defined]
        return None
    link = client.dashboard_link  # type: ignore[attr-defined]
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return f"{link} (its pages need bokeh: pip install bokeh)"
    return link
