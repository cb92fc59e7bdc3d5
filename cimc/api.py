"""The Python API: the same reach as the command line.

    model = cimc.compile("kws.onnx", calib="calib.npz")
    outputs = model.run({"features": x}, fidelity="ideal")
    report = cimc.verify("kws.onnx", model, samples=16, fidelity="noisy", seed=3)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cimc.backends.saturation import SaturationCounts
from cimc.backends.simulator import Simulator, SimulatorOptions
from cimc.compiler import CompileOptions, build_image, compile_to_ir, image_provenance, pipeline_of, with_nl_adc_bits
from cimc.defects import ChipMeasurement
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware, load_hardware
from cimc.image import Image, load_image
from cimc.importer import DimSpec
from cimc.ranges import CALIB_SEPARATOR, range_warning
from cimc.verification import VerifyReport, verify_image


@dataclass
class CompiledModel:
    """A programming image with its simulator."""

    image: Image

    def run(self, inputs: Mapping[str, np.ndarray], fidelity: str = "exact", seed: int = 0,
            drift_time_s: float | None = None, vread_scale: float | None = None) -> dict[str, np.ndarray]:
        return Simulator(self.image, SimulatorOptions(fidelity, seed, drift_time_s, vread_scale)).run(inputs)

    def run_with_saturation(self, inputs: Mapping[str, np.ndarray], fidelity: str = "ideal", seed: int = 0,
                            drift_time_s: float | None = None) -> tuple[dict[str, np.ndarray], SaturationCounts]:
        """Outputs and, per layer, how many conversions went beyond their compiled ranges (``ideal``/``noisy`` only)."""
        simulator = Simulator(self.image, SimulatorOptions(fidelity, seed, drift_time_s, counters=True))
        outputs = simulator.run(inputs)
        if simulator.saturation is None:
            raise CimcError("saturation is counted at ideal and noisy fidelity only (exact has no converters)")
        return outputs, simulator.saturation

    def save(self, path: str | Path) -> None:
        self.image.save(path)

    @staticmethod
    def load(path: str | Path) -> CompiledModel:
        return CompiledModel(load_image(path))


class RangeAssumptionWarning(UserWarning):
    """Converter ranges rest on assumed input bounds or a step cap, not on data or declared bounds."""


def compile(model: str | Path, hw: str | Path | Hardware | None = None,  # noqa: A001
            calib: str | Path | Sequence[str | Path] | None = None,
            input_shapes: Mapping[str, Sequence[DimSpec]] | None = None, pipeline: str | None = None,
            identity: str = "auto", share_weights: bool = True,
            input_ranges: Mapping[str, tuple[float, float]] | None = None,
            nl_adc_bits: int | str | None = None, reference: bool = True,
            defects: ChipMeasurement | None = None) -> CompiledModel:
    """Import, lower and lay out ``model`` for ``hw`` (a TOML path, a :class:`Hardware`, or the defaults).

    ``calib``: one or more .npz files or directories of them (as ``cimc compile --calib``, repeated);
    ``input_ranges``: declared (lo, hi) per graph input name (as ``--input-range``);
    ``share_weights=False`` gives every MVM its own copy of its weights, even where several use the same constant;
    ``nl_adc_bits``: an int overrides the hardware's NL-ADC bits; ``"auto"`` lets fuse-activation pick the fewest
    bits per ramp (see ``cimc compile --nl-adc-bits``);
    ``reference=False`` leaves the unquantized weights out of the image (``cimc compile --no-reference``): it then runs
    at ideal and noisy fidelity only, and cannot be verified;
    ``defects``: a chip measurement (``cimc.defects.load_measurement``, ``cimc compile --defects``) to map around.
    """
    hardware = hw if isinstance(hw, Hardware) else load_hardware(hw)
    if nl_adc_bits is not None and nl_adc_bits != "auto":
        if isinstance(nl_adc_bits, bool) or not isinstance(nl_adc_bits, int):
            raise CimcError(f"nl_adc_bits must be a number of bits or 'auto', got {nl_adc_bits!r}")
        hardware = with_nl_adc_bits(hardware, nl_adc_bits)
    paths = [calib] if isinstance(calib, (str, Path)) else list(calib or ())
    options = CompileOptions(pipeline=pipeline, calib=CALIB_SEPARATOR.join(str(Path(p).resolve()) for p in paths) or None,
                             input_ranges=";".join(f"{n}={float(lo)!r},{float(hi)!r}" for n, (lo, hi) in (input_ranges or {}).items()),
                             identity=identity, share_weights=share_weights, input_shapes=input_shapes,
                             auto_bits=nl_adc_bits == "auto", defects=defects)
    module = compile_to_ir(model, hardware, options)
    warning = range_warning(module)
    if warning:
        warnings.warn(warning.removeprefix("warning: "), RangeAssumptionWarning, stacklevel=2)
    return CompiledModel(build_image(module, hardware, image_provenance(model, hardware, pipeline_of(options)), reference,
                                     release=True))  # the module is dropped here



def verify(model: str | Path, compiled: CompiledModel | str | Path, inputs: Mapping[str, np.ndarray] | None = None,
           samples: int = 8, fidelity: str = "exact", seed: int = 0, defects: ChipMeasurement | None = None,
           labels: np.ndarray | None = None, label_output: str | None = None) -> VerifyReport:
    """Compare ``compiled`` with onnxruntime on ``inputs`` (or ``samples`` random ones), as ``cimc verify``.

    ``defects``: chip ``seed``'s measurement, so that the noisy bound counts its stuck devices exactly
    (``cimc verify --defects``); ``labels``: class indices or 0/1 targets to score both runs with (``cimc.labels``), on
    ``label_output`` or the one output they fit (``cimc verify --labels KEY[:OUTPUT]``).
    """
    image = compiled.image if isinstance(compiled, CompiledModel) else load_image(compiled)
    return verify_image(model, image, inputs, samples, SimulatorOptions(fidelity, seed), defects,
                        None if labels is None else (np.asarray(labels), label_output))
