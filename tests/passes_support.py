"""Helpers shared by the tests that compare cimc with onnxruntime."""

from __future__ import annotations

import numpy as np

RTOL, ATOL = 1e-5, 1e-6


def assert_matches(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], rtol: float = RTOL, atol: float = ATOL) -> None:
    """Same names, dtypes and shapes, and values within rtol/atol."""
    assert set(expected) <= set(actual), f"missing outputs {sorted(set(expected) - set(actual))}"
    for name, ref in expected.items():
        assert actual[name].dtype == ref.dtype and actual[name].shape == ref.shape, \
            f"{name}: {actual[name].dtype}{list(actual[name].shape)} vs {ref.dtype}{list(ref.shape)}"
        np.testing.assert_allclose(actual[name], ref, rtol=rtol, atol=atol, err_msg=name)
