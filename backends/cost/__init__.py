"""The cost model: area, energy, latency and throughput of a programming image (``cimc report``).

``program`` reads the image into hardware events, ``components`` prices one
component each, ``model`` prices the events under a converter scheme,
``baselines`` names the three schemes compared, ``summary`` turns a priced
scheme into numbers, ``report`` assembles them (``cost_report``), ``sweep``
re-costs the mapping at other NL-ADC widths, ``tables`` and ``plots``
present them, ``command`` is the CLI. docs/cost-model.md has every formula.
Nothing is imported here, so that building the CLI's parser stays cheap.
"""
