"""cimc sweep: Monte Carlo chip sweeps over hardware points, fanned out as Dask tasks.

Modules, in the order data flows: ``grid`` (the hardware points), ``cache`` (images by
content hash), ``tasks`` (what a worker runs) with ``metrics`` (what a chip run is scored
by), ``fanout`` (the task graph on a Dask client), ``results`` (rows, summaries, JSON,
CSV, table) and ``plots``; ``cluster`` opens the Dask client, ``api`` is the Python entry
point and ``command`` the CLI. Dask is imported only when a sweep runs, so ``import
cimc.sweep`` works without the ``sweep`` extra.
"""

from cimc.sweep.api import sweep
from cimc.sweep.grid import HardwarePoint
from cimc.sweep.results import SweepResult

__all__ = ["HardwarePoint", "SweepResult", "sweep"]
