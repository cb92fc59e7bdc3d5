"""The cost model: area, energy, latency and throughput of a programming image (``cimc report``).

``program`` reads the image into hardware events, ``components`` prices one
component each, ``model`` prices the events under a converter scheme,
``baselines`` names the three schemes compared, ``summary`` turns a priced
scheme into numbers, ``sweep`` re-costs the mapping at other NL-ADC widths,
``tables`` and ``plots`` present them. docs/cost-model.md has every formula.
"""

from __future__ import annotations

from cimc.backends.cost.report import cost_report, format_report

__all__ = ["cost_report", "format_report"]
