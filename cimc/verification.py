"""Verification of a compiled image against onnxruntime, output by output and layer by layer.

The tolerance is derived from the fidelity and the bit widths, and printed:

- ``exact``: the image must reproduce the model up to float32 reassociation,
  max |err| <= 1e-5 + 1e-4 max|ref| per output (summation order changes, and
  conductance pairs encode every float32 weight exactly).
- ``ideal``: the coarsest converter sets the error scale. An N-bit uniform
  quantizer is within 2^-N of its full scale; the NL-ADCs, linear ADCs and
  DACs each add such an error per layer and per step, so the relative RMS
  error of an output may reach a few of them: the bound is
  4 * max(2^-nl_adc_bits, 2^-(adc_bits-1), 2^-(dac_bits-1)).
- ``noisy``: the ideal bound plus 4 * program_noise / (G_max - G_min) for the
  weight error, plus the stuck-at fraction (a stuck device corrupts a weight
  by up to the whole range).

For classifier-like outputs (float, rank >= 2, several classes on the last
axis) the argmax agreement with onnxruntime is reported too.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from cimc.backends.saturation import SaturationCounts
from cimc.backends.simulator import Simulator, SimulatorOptions, terminal_progress
from cimc.diagnostics import CimcError
from cimc.hardware import Hardware
from cimc.image import Image
from cimc.importer import load_onnx
from cimc.ir import Operation
from cimc.printer import legal_name

DEFAULT_SEQUENCE = 20


@dataclass
class OutputReport:
    name: str
    max_abs: float
    rms: float
    relative: float
    argmax_agreement: float | None
    passed: bool


@dataclass
class VerifyReport:
    fidelity: str
    tolerance: str
    outputs: list[OutputReport]
    layers: list[dict[str, Any]] = field(default_factory=list)
    saturation: SaturationCounts | None = None  # converters driven beyond their ranges (ideal and noisy fidelity)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_json(self) -> str:
        return json.dumps({"fidelity": self.fidelity, "tolerance": self.tolerance, "passed": self.passed,
                           "outputs": [o.__dict__ for o in self.outputs], "layers": self.layers,
                           "saturation": self.saturation.as_json() if self.saturation is not None else None},
                          indent=1, sort_keys=True)

    def table(self) -> str:
        lines = [f"fidelity {self.fidelity}; tolerance: {self.tolerance}",
                 f"{'output':<20} {'max |err|':>11} {'RMS err':>11} {'rel err':>9} {'argmax':>8}  result"]
        for o in self.outputs:
            agree = "-" if o.argmax_agreement is None else f"{100 * o.argmax_agreement:.1f}%"
            lines.append(f"{o.name:<20} {o.max_abs:>11.4g} {o.rms:>11.4g} {o.relative:>9.3%} {agree:>8}  {'ok' if o.passed else 'FAIL'}")
        if self.layers:
            lines.append("per layer (tensors named as in the ONNX model, in program order):")
            lines.append(f"  {'tensor':<40} {'max |err|':>11} {'rel err':>9}")
            for layer in self.layers:
                lines.append(f"  {layer['name'][:40]:<40} {layer['max_abs']:>11.4g} {layer['relative']:>9.3%}")
        if self.saturation is not None:
            lines += _saturation_table(self.saturation)
        return "\n".join(lines) + "\n"


def _saturation_table(counts: SaturationCounts) -> list[str]:
    """Per weight block: conversions beyond their range (see backends/saturation.py for what each column counts)."""
    def cell(n: int, total: int) -> str:
        return f"{n} ({n / total:.1%})" if total and n else "0" if total else "-"

    lines = ["saturation per layer (converter inputs beyond the compiled ranges; clipped = the code is wrong by > 1/2 LSB):",
             f"  {'block':<28} {'DAC clipped':>14} {'ADC at rails':>14} {'ADC clipped':>14} {'NL beyond':>14} {'NL clipped':>14}"]
    for layer in [*counts.layers.values(), counts.total()]:
        lines.append(f"  {layer.block[:28]:<28} {cell(layer.dac_clipped, layer.dac_inputs):>14} "
                     f"{cell(layer.adc_rail, layer.adc_codes):>14} {cell(layer.adc_clipped, layer.adc_codes):>14} "
                     f"{cell(layer.nl_adc_beyond, layer.nl_adc_codes):>14} {cell(layer.nl_adc_clipped, layer.nl_adc_codes):>14}")
    return lines


def tolerance(fidelity: str, hw: Hardware) -> tuple[str, float]:
    """(description, relative RMS bound); the exact bound is elementwise and described in the text."""
    c, d, n = hw.converters, hw.device, hw.nonideality
    if fidelity == "exact":
        return "max |err| <= 1e-5 + 1e-4 * max|ref| (float32 reassociation)", 0.0
    quant = 4 * max(2.0 ** -c.nl_adc_bits, 2.0 ** -(c.adc_bits - 1), 2.0 ** -(c.dac_bits - 1))
    if fidelity == "ideal":
        return f"relative RMS err <= 4 * 2^-{min(c.nl_adc_bits, c.adc_bits - 1, c.dac_bits - 1)} = {quant:.4g}", quant
    noise = 4 * n.program_noise_us / (d.g_max_us - d.g_min_us) + n.stuck_on_rate + n.stuck_off_rate
    return f"relative RMS err <= quantization {quant:.4g} + device noise {noise:.4g} = {quant + noise:.4g}", quant + noise


def random_inputs(image: Image, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs drawn uniformly inside the calibrated (or assumed) range of each graph input."""
    program = image.program()
    ranges = program.attributes.get("input_ranges")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i, spec in enumerate(image.manifest["model"]["inputs"]):
        symbolic = [d for d in spec["shape"] if not isinstance(d, int)]
        batch = next((d for d in symbolic if isinstance(d, str) and "batch" in d.lower()), symbolic[-1] if symbolic else None)
        shape = [d if isinstance(d, int) else samples if d == batch else DEFAULT_SEQUENCE for d in spec["shape"]]
        lo, hi = ranges[i] if isinstance(ranges, tuple) and i < len(ranges) else (-1.0, 1.0)  # type: ignore[misc]
        dtype = np.dtype({"f32": np.float32, "f64": np.float64, "i64": np.int64, "i32": np.int32}.get(spec["dtype"], np.float32))
        if dtype.kind == "f":
            out[spec["name"]] = rng.uniform(lo, hi, size=shape).astype(dtype)
        elif hi > lo:
            out[spec["name"]] = rng.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)
        else:
            raise CimcError(f"input '{spec['name']}' is {spec['dtype']} with no calibrated range: give --inputs")
    return out


def _reference(model_path: Path, inputs: Mapping[str, np.ndarray], extra: list[str]) -> dict[str, np.ndarray]:
    model = load_onnx(model_path)
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name for v in inferred.graph.value_info} | {o.name for o in model.graph.output}
    existing = {o.name for o in model.graph.output}
    for name in extra:
        if name in known and name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, dict(inputs))))
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own types)
        raise CimcError(f"onnxruntime cannot run {model_path} on these inputs: {str(e).splitlines()[0]}") from None


def verify_image(model_path: str | Path, image: Image, inputs: Mapping[str, np.ndarray] | None = None,
                 samples: int = 8, options: SimulatorOptions | None = None) -> VerifyReport:
    """Run onnxruntime and the simulator on the same inputs and compare every output and every named layer."""
    options = dataclasses.replace(options or SimulatorOptions(), counters=True)
    feeds = dict(inputs) if inputs is not None else random_inputs(image, samples, options.seed)
    simulator = Simulator(image, options)
    named: dict[str, np.ndarray] = {}
    onnx_names = _onnx_tensor_names(Path(model_path))

    def observe(op: Operation, operands: object, results: list[np.ndarray]) -> None:
        if op.name == "builtin.constant" or op.parent is not simulator.program.body:
            return
        for res, array in zip(op.results, results):
            if res.name and res.name in onnx_names and array.dtype.kind == "f":
                named[res.name] = array

    print(f"running the simulator ({options.fidelity}) on {', '.join(f'{k}{list(v.shape)}' for k, v in feeds.items())}",
          file=sys.stderr)
    actual = simulator.run(feeds, observe, terminal_progress)
    layer_names = [onnx_names[n] for n in named]
    print("running onnxruntime", file=sys.stderr)
    expected = _reference(Path(model_path), feeds, layer_names)
    description, rel_bound = tolerance(options.fidelity, simulator.hw)
    outputs = []
    for name, ref in ((n, expected[n]) for n in (o["name"] for o in image.manifest["model"]["outputs"])):
        got = actual[name].astype(np.float64)
        ref64 = ref.astype(np.float64)
        err = got - ref64
        max_abs = float(np.abs(err).max()) if err.size else 0.0
        rms = float(np.sqrt(np.mean(err ** 2))) if err.size else 0.0
        ref_rms = float(np.sqrt(np.mean(ref64 ** 2))) if err.size else 0.0
        relative = rms / ref_rms if ref_rms > 0 else rms
        argmax = None
        if ref.ndim >= 2 and ref.shape[-1] > 1 and ref.dtype.kind == "f":
            argmax = float((got.argmax(-1) == ref64.argmax(-1)).mean())
        if options.fidelity == "exact":
            passed = max_abs <= 1e-5 + 1e-4 * float(np.abs(ref64).max(initial=0.0))
        else:
            passed = relative <= rel_bound
        outputs.append(OutputReport(name, max_abs, rms, relative, argmax, passed))
    layers = []
    for ir_name, array in named.items():
        onnx_name = onnx_names[ir_name]
        if onnx_name not in expected or expected[onnx_name].shape != array.shape:
            continue
        ref64 = expected[onnx_name].astype(np.float64)
        err = array.astype(np.float64) - ref64
        ref_rms = float(np.sqrt(np.mean(ref64 ** 2))) if ref64.size else 0.0
        rms = float(np.sqrt(np.mean(err ** 2))) if err.size else 0.0
        layers.append({"name": onnx_name, "max_abs": float(np.abs(err).max(initial=0.0)),
                       "relative": rms / ref_rms if ref_rms > 0 else rms})
    return VerifyReport(options.fidelity, description, outputs, layers, simulator.saturation)


def _onnx_tensor_names(model_path: Path) -> dict[str, str]:
    """IR value name -> ONNX tensor name, for every float node output of the model."""
    model = onnx.load(str(model_path), load_external_data=False)
    names: dict[str, str] = {}
    for node in model.graph.node:
        for out in node.output:
            if out:
                names[legal_name(out) or out] = out
    return {k: v for k, v in names.items() if re.fullmatch(r"[A-Za-z0-9_.$]+", k)}
