"""cimc sweep: Monte Carlo chip sweeps over hardware points, fanned out as Dask tasks.

Modules, in the order data flows: ``grid`` (the hardware points), ``cache`` (images by
content hash), ``tasks`` (what a worker runs) with ``metrics`` (what a chip run is scored
by), ``fanout`` (the task graph on a Dask client), ``results`` (rows, summaries, JSON,
CSV, table) and ``plots``; ``cluster`` opens the Dask client, ``api`` is the Python entry
point and ``command`` the CLI. Dask is imported only when a sweep runs, so ``import
cimc.sweep`` works without the ``sweep`` extra.

The public names are imported on first use: every ``cimc`` command builds its parser with
``cimc.sweep.command``, and ``api`` pulls in the verifier's onnxruntime and scipy (110 MB
of resident memory, more than a compile of a 2-layer LSTM-1024 needs for its weights).
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cimc.sweep.api import sweep
    from cimc.sweep.grid import HardwarePoint
    from cimc.sweep.results import SweepResult

_EXPORTS = {"sweep": "cimc.sweep.api", "HardwarePoint": "cimc.sweep.grid", "SweepResult": "cimc.sweep.results"}

__all__ = ["HardwarePoint", "SweepResult", "sweep"]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cimc.sweep' has no attribute '{name}'")
