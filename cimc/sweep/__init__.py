"""cimc sweep: Monte Carlo chip sweeps over hardware points, fanned out as Dask tasks."""
