"""The inputs given to an image (``cimc run/verify --inputs``), checked against the image's declared inputs.

onnxruntime aborts the whole process on some inputs it cannot take (a
zero-sized batch: "terminate called without an active exception"), and the
simulator would fail deep in a kernel on a batch the model's initial states do
not have; both are found here first, with the names and shapes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cimc.diagnostics import CimcError
from cimc.image import Image
from cimc.types import DTYPES

def check_feeds(image: Image, feeds: Mapping[str, np.ndarray], origin: str) -> dict[str, np.ndarray]:
    """``feeds`` if they match the image's inputs: the names, dtypes, ranks, fixed and shared symbolic dims; no
    zero-sized dim; finite floats. Otherwise a CimcError naming ``origin`` and what differs."""
    specs = image.manifest["model"]["inputs"]
    names = [s["name"] for s in specs]
    missing, unknown = [n for n in names if n not in feeds], sorted(set(feeds) - set(names))
    if missing or unknown:
        raise CimcError(f"{origin}: the model's inputs are {names}" + (f"; missing {missing}" if missing else "")
                        + (f"; unknown {unknown}" if unknown else ""))
    symbols: dict[str, tuple[int, str]] = {}
    for spec in specs:
        name, array, declared = spec["name"], feeds[spec["name"]], spec["shape"]
        want = f"{spec['dtype']}[{', '.join('?' if d is None else str(d) for d in declared)}]"
        dtype = DTYPES.get(spec["dtype"])
        if dtype is not None and array.dtype != dtype:
            raise CimcError(f"{origin}: input '{name}' is {array.dtype}, the model wants {want}")
        if array.ndim != len(declared):
            raise CimcError(f"{origin}: input '{name}' has shape {list(array.shape)}, the model wants {want}")
        for dim, extent in zip(declared, array.shape):
            if extent == 0:
                raise CimcError(f"{origin}: input '{name}' has shape {list(array.shape)}: a zero-sized dim holds no data")
            if isinstance(dim, int) and dim != extent:
                raise CimcError(f"{origin}: input '{name}' has shape {list(array.shape)}, the model wants {want}")
            if isinstance(dim, str):
                bound = symbols.setdefault(dim, (extent, name))
                if bound[0] != extent:
                    raise CimcError(f"{origin}: input '{name}' has shape {list(array.shape)}, but '{dim}' is "
                                    f"{bound[0]} in input '{bound[1]}'")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise CimcError(f"{origin}: input '{name}' holds {int((~np.isfinite(array)).sum())} NaN or infinite values")
    return dict(feeds)
