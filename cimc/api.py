"""The Python API: the same reach as the command line.

    model = cimc.compile("kws.onnx", calib="calib.npz")
    outputs = model.run({"features": x}, fidelity="ideal")
    report = cimc.verify("kws.onnx", model, samples=16, fidelity="noisy", seed=3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.compiler import CompileOptions, compile_to_ir, with_nl_adc_bits
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware, load_hardware
from cimc.image import Image, build_image, load_image
from cimc.importer import DimSpec
from cimc.verification import VerifyReport, verify_image


@dataclass
class CompiledModel:
    """A programming image with its simulator."""

    image: Image

    def run(self, inputs: Mapping[str, np.ndarray], fidelity: str = "exact", seed: int = 0,
            drift_time_s: float | None = None, vread_scale: float | None = None) -> dict[str, np.ndarray]:
        return Simulator(self.image, SimulatorOptions(fidelity, seed, drift_time_s, vread_scale)).run(inputs)

    def save(self, path: str | Path) -> None:
        self.image.save(path)

    @staticmethod
    def load(path: str | Path) -> CompiledModel:
        return CompiledModel(load_image(path))


def compile(model: str | Path, hw: str | Path | Hardware | None = None, calib: str | Path | None = None,  # noqa: A001
            input_shapes: Mapping[str, Sequence[DimSpec]] | None = None, pipeline: str | None = None,
            identity: str = "auto", nl_adc_bits: int | str | None = None) -> CompiledModel:
    """Import, lower and lay out ``model`` for ``hw`` (a TOML path, a :class:`Hardware`, or the defaults).

    ``nl_adc_bits``: an int overrides the hardware's NL-ADC bits; ``"auto"`` lets fuse-activation pick the fewest
    bits per ramp (see ``cimc compile --nl-adc-bits``).
    """
    hardware = hw if isinstance(hw, Hardware) else load_hardware(hw)
    if nl_adc_bits is not None and nl_adc_bits != "auto":
        if isinstance(nl_adc_bits, bool) or not isinstance(nl_adc_bits, int):
            raise CimcError(f"nl_adc_bits must be a number of bits or 'auto', got {nl_adc_bits!r}")
        hardware = with_nl_adc_bits(hardware, nl_adc_bits)
    options = CompileOptions(pipeline=pipeline, calib=str(Path(calib).resolve()) if calib else None,
                             identity=identity, input_shapes=input_shapes, auto_bits=nl_adc_bits == "auto")
    return CompiledModel(build_image(compile_to_ir(model, hardware, options), hardware))


def verify(model: str | Path, compiled: CompiledModel | str | Path, inputs: Mapping[str, np.ndarray] | None = None,
           samples: int = 8, fidelity: str = "exact", seed: int = 0) -> VerifyReport:
    image = compiled.image if isinstance(compiled, CompiledModel) else load_image(compiled)
    return verify_image(model, image, inputs, samples, SimulatorOptions(fidelity, seed))
