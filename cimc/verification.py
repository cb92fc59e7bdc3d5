"""Verification of a compiled image against onnxruntime, output by output and layer by layer.

The tolerance is not a constant: it is derived for this image and these
inputs by ``cimc.error_bound``, which runs the image's program at exact
fidelity and carries beside every value a worst-case bound on how far the
simulated value can be from the model's, element by element. Its sources
are the image's own numbers:

- the DAC step of each input segment, s_ref r_i / (2 (2^(dac_bits-1) - 1)),
  propagated through |W| to each column (with clipping and incoming error:
  the quantizer is monotone, so its ends bound it);
- device-level rounding, read from the image (programmed level vs target
  conductance, at most dG/2 per device), propagated as a weight error
  through the driven inputs;
- each linear ADC's half code step over its column's range;
- each NL-ADC's code against its ramp's realized thresholds: half an output
  LSB plus the realized INL, evaluated at the ends of the input's interval;
- float32 rounding of this simulator and of onnxruntime (gamma_n sum |w x|
  per dot product, u |y| per elementwise op, a few ulp per transcendental
  function);
- then through the cell update by interval rules per op (a worst case, not
  an RMS estimate: rounding errors of a DAC or a ramp are deterministic
  functions of the input and can align, so only a worst case is a bound). It
  is computed per sample of the inputs verified, and it stays tight where
  activations saturate or clip.

Recurrences are checked step by step. A worst case carried through many
steps multiplies by |Jacobian| every step and grows geometrically even where
the signed dynamics contract (on the 49-step KWS LSTM the free-running bound
exceeds 300 % relative RMS at ideal, 1000 % at exact: it cannot fail). The
error of one step is local; the divergence over many is the model's own
sensitivity. So (``cimc.stepwise``):

1. The exact simulator's run is the reference trajectory: every ``cim.loop``'s
   carried values at every step. Each step of each LSTM/GRU/RNN node is also
   run by onnxruntime from the very state the simulator carried into it
   (``cimc.onnx_steps``); the state after the step must lie within that step's
   float32 bound (enforced at every fidelity: it is what makes ``exact`` strict
   on long sequences). The exact run's outputs stay checked against
   onnxruntime elementwise within their free-running float32 bound.
2. ``ideal``/``noisy``: the run under test is teacher-forced: every step after
   the first starts from the reference's carried values. Its per-step values
   (carried values, scan outputs) and its outputs are compared with the
   reference's, each within the teacher-forced bound
   (``cimc.error_bound.step_bounds``: the carried bound reset at every step,
   since both runs start it from the same values).
3. The free-running outputs of a quantized fidelity against onnxruntime, with
   their compounding bound, are reported as informational.

Pass/fail, elementwise at every fidelity:

- ``exact``: only the float32 terms (float32 reassociation: the image's
  conductances encode every weight).
- ``ideal``: every element within its bound.
- ``noisy``: the bound adds programming and read noise at s standard
  deviations per column read, with s chosen so that P(any of the run's
  Gaussian draws exceeds s of its standard deviations) <= 1e-3 by the union
  bound (about 6 for KWS): the propagation is worst-case, so without stuck
  devices an element outside its bound has probability below 1e-3. Drift and
  the read-voltage deviation (at s sigma) enter as a gain error of linear
  ADCs (NL-ADCs are ratiometric to the read voltage; drift reaches them
  through their re-tuned calibration). Stuck devices enter at a confidence
  (``cimc.error_bound.FaultModel``): with probability >= 1 - 1e-3 no column
  holds more than k of them (binomial in the stuck rates, union bound over
  the image's columns), and the bound takes the k that would move it most;
  given the chip's measurement (``--defects``, what map-defects repaired) the
  stuck devices the tester saw are known exactly and the rest are only those
  it missed. So an element outside its bound at ``noisy`` has probability
  below 2e-3 (noise and faults together).

With ``labels`` (``cimc verify --labels KEY[:OUTPUT]``), the simulator's and
onnxruntime's free-running outputs are also scored against integer labels
carried in the inputs file (``cimc.labels``: accuracy and bits per label).

Discrete outputs (integer dtype, e.g. ArgMax) are compared by agreement: an
element the bound certifies (its top value beats every other by more than
their bounds) must agree. For classifier-like float outputs (rank >= 2,
several classes on the last axis) the argmax agreement is reported too; for an
output a Sigmoid computes (independent per-element probabilities, as a
multi-label or voice-activity model emits; ``cimc.labels.output_producers``)
the argmax means nothing, and the decision agreement (both sides of
probability 0.5 alike, elementwise) is reported instead.
The printed tolerance lists, per output, the bound with each source alone
and all together (relative RMS).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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
from cimc.error_bound import ACTIVATION_ULPS, Sources, breakdown, output_bounds, step_bounds, stuck_summary, tail_sigmas
from cimc.image import Image
from cimc.defects import ChipMeasurement
from cimc.importer import load_onnx
from cimc.labels import describe as describe_labels, label_metrics, output_producers
from cimc.limits import check_allocation
from cimc.ir import Operation
from cimc.onnx_steps import operand_names, per_step_against_onnxruntime, recurrent_nodes
from cimc.printer import legal_name
from cimc.stepwise import Trajectory, run_trajectory
from cimc.types import dtype_name

DEFAULT_SEQUENCE = 20


@dataclass
class OutputReport:
    name: str
    max_abs: float
    rms: float
    relative: float
    argmax_agreement: float | None
    passed: bool
    bound_relative: float = 0.0  # relative RMS of the elementwise bound
    worst_ratio: float = 0.0  # max over elements of |err| / bound (<= 1 within the bound)
    certified: float | None = None  # discrete outputs: fraction of elements the bound certifies
    decision_agreement: float | None = None  # Sigmoid outputs: fraction of elements on the same side of 0.5

    @property
    def agreement(self) -> str:
        """The agreement column of the table: argmax (or discrete) agreement, else decision agreement ('>0.5')."""
        if self.argmax_agreement is not None:
            return f"{100 * self.argmax_agreement:.1f}%"
        return "-" if self.decision_agreement is None else f"{100 * self.decision_agreement:.1f}%>.5"


@dataclass
class VerifyReport:
    fidelity: str
    tolerance: str
    outputs: list[OutputReport]
    layers: list[dict[str, Any]] = field(default_factory=list)
    steps: list[OutputReport] = field(default_factory=list)  # quantized fidelities: teacher-forced, against the exact run
    onnx_steps: list[OutputReport] = field(default_factory=list)  # the exact run's every step against onnxruntime's
    exact: list[OutputReport] = field(default_factory=list)  # quantized fidelities: the exact run's outputs against onnxruntime

    saturation: SaturationCounts | None = None  # converters driven beyond their ranges (ideal and noisy fidelity)
    labels: dict[str, dict[str, float | int | str]] | None = None  # "simulator"/"onnxruntime" -> cimc.labels metrics

    @property
    def outputs_informational(self) -> bool:
        """With per-step checks of a quantized fidelity, its free-running outputs' compounding bound is reported only."""
        return bool(self.steps) and self.fidelity != "exact"

    @property
    def passed(self) -> bool:
        enforced = self.steps + self.onnx_steps + self.exact + ([] if self.outputs_informational else self.outputs)
        return all(o.passed for o in enforced)

    def to_json(self) -> str:
        return json.dumps({"fidelity": self.fidelity, "tolerance": self.tolerance, "passed": self.passed,
                           "outputs": [o.__dict__ for o in self.outputs], "layers": self.layers,
                           "saturation": self.saturation.as_json() if self.saturation is not None else None,
                           "outputs_informational": self.outputs_informational,
                           "steps": [o.__dict__ for o in self.steps], "onnx_steps": [o.__dict__ for o in self.onnx_steps],
                           "exact": [o.__dict__ for o in self.exact], "labels": self.labels},
                          indent=1, sort_keys=True)

    def table(self) -> str:
        lines = [f"fidelity {self.fidelity}; tolerance: {self.tolerance}"]
        sections = [("per step, teacher-forced, against the exact run (enforced)", self.steps, "FAIL"),
                    ("exact run per step, from the same states, against onnxruntime (enforced)", self.onnx_steps, "FAIL"),
                    ("exact run against onnxruntime (enforced)", self.exact, "FAIL"),
                    ("free-running against onnxruntime" + (" (informational: compounding bound)" if self.outputs_informational
                                                          else ""), self.outputs, "over" if self.outputs_informational else "FAIL")]
        for title, rows, failed in sections:
            if not rows:
                continue
            if self.steps or self.onnx_steps or self.exact:
                lines.append(title + ":")
            lines.append(f"{'output':<20} {'max |err|':>11} {'RMS err':>11} {'rel err':>9} {'rel bound':>9} {'err/bound':>9} {'agree':>9}  result")
            for o in rows:
                lines.append(f"{o.name:<20} {o.max_abs:>11.4g} {o.rms:>11.4g} {o.relative:>9.3%} {o.bound_relative:>9.3%} "
                             f"{o.worst_ratio:>9.3g} {o.agreement:>9}  {'ok' if o.passed else failed}")
        if self.layers:
            lines.append("per layer (tensors named as in the ONNX model, in program order):")
            lines.append(f"  {'tensor':<40} {'max |err|':>11} {'rel err':>9}")
            for layer in self.layers:
                lines.append(f"  {layer['name'][:40]:<40} {layer['max_abs']:>11.4g} {layer['relative']:>9.3%}")
        if self.saturation is not None:
            lines += _saturation_table(self.saturation)
        if self.labels is not None:
            for who, m in self.labels.items():
                lines.append(f"labels ({who}): {describe_labels(m)}")
        return "\n".join(lines) + "\n"


def _relative_rms(values: np.ndarray, ref: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(values ** 2))) if values.size else 0.0
    ref_rms = float(np.sqrt(np.mean(ref ** 2))) if ref.size else 0.0
    return rms / ref_rms if ref_rms > 0 else rms


def compare_output(name: str, actual: np.ndarray, reference: np.ndarray, bound: np.ndarray, fidelity: str,
                   producer: str = "") -> OutputReport:
    """One output against its reference and its elementwise bound (see the module docstring for the pass rule).

    The rule is elementwise at every fidelity (noisy through the tail sigma of its bound); ``fidelity`` is kept
    in the signature for callers. ``producer`` is the ONNX op that computes the output
    (``cimc.labels.output_producers``): a Sigmoid's output gets a decision agreement instead of an argmax one.
    """
    got, ref = actual.astype(np.float64), reference.astype(np.float64)
    err = np.abs(got - ref)
    max_abs = float(err.max(initial=0.0))
    rms = float(np.sqrt(np.mean(err ** 2))) if err.size else 0.0
    relative = _relative_rms(err, ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(err == 0, 0.0, err / bound)
    worst = float(ratios.max(initial=0.0))
    if reference.dtype.kind != "f":
        certified = bound == 0
        agreement = float((err == 0).mean()) if err.size else 1.0
        passed = bool((err[certified] == 0).all())
        return OutputReport(name, max_abs, rms, relative, agreement, passed, 0.0, worst, float(certified.mean()))
    argmax = decision = None
    if producer == "Sigmoid":
        decision = float(((got > 0.5) == (ref > 0.5)).mean()) if ref.size else 1.0
    elif ref.ndim >= 2 and ref.shape[-1] > 1:
        argmax = float((got.argmax(-1) == ref.argmax(-1)).mean())
    bound_relative = _relative_rms(bound, ref)
    passed = bool((err <= bound).all())
    return OutputReport(name, max_abs, rms, relative, argmax, passed, bound_relative, worst, decision_agreement=decision)


def derivation(fidelity: str, image: Image, sources: Sources, parts: list[tuple[str, dict[str, np.ndarray]]],
               total: dict[str, np.ndarray], reference: Mapping[str, np.ndarray], stuck: str | None) -> str:
    """The printed tolerance: what the bound covers, with each source's share per output."""
    hw = image.hardware
    c, d = hw.converters, hw.device
    delta_g = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    head = {"exact": "elementwise float32 bound (gamma_n sum|w x| per dot product, u|y| per op, "
                     f"{ACTIVATION_ULPS:g} ulp per activation, both implementations), see cimc/error_bound.py",
            "ideal": "elementwise worst-case bound around the exact trajectory (cimc/error_bound.py): "
                     f"DAC {c.dac_bits} bits per input segment, device levels (dG = {delta_g:.3g} uS, dG/2 per device), "
                     f"linear ADC {c.adc_bits} bits per column range, NL-ADC {c.nl_adc_bits} bits against realized ramps, float32",
            "noisy": f"ideal bound + device noise at {sources.sigmas:.3g} sigma per column read (P(any of the run's Gaussian "
                     f"draws beyond it) <= 1e-3, union bound) + linear-ADC gain |k - 1| = {sources.gain:.3g} (drift, read voltage)"
                     + _fault_text(image, sources)
            }[fidelity]
    if fidelity != "exact":
        head += "; enforced per step (teacher-forced), shares below are of the per-step output bound"
    lines = [head]
    for name, bound in total.items():
        ref = np.abs(reference[name].astype(np.float64))
        if reference[name].dtype.kind != "f":
            lines.append(f"  {name}: discrete, {float((bound == 0).mean()):.1%} of elements certified by the bound")
            continue
        shares = "".join(f"{label} {_relative_rms(b[name], ref):.3%}, " for label, b in parts)
        lines.append(f"  {name}, relative RMS of the bound: {shares}all together {_relative_rms(bound, ref):.3%}")
    if stuck:
        lines.append(f"  {stuck}")
    return "\n".join(lines)


def _fault_text(image: Image, sources: Sources) -> str:
    """How the noisy bound counts stuck devices (cimc.error_bound.FaultModel), for the printed derivation."""
    f = sources.faults
    if f is None:
        return " (no stuck devices: the stuck rates are 0)"
    n = image.hardware.nonideality
    used = sorted({int(np.sum(image.device_levels(k)[:, c] >= 0)) for k in image.array_indices()
                   for c in range(image.device_levels(k).shape[1])} - {0})
    column = 2 * max(used) if used else 0  # a weight column's two bit lines at their fullest
    k = f.count(column)
    if f.measurement is not None:
        return (f" + stuck devices of the measured chip {f.measurement.seed} (--defects): those the tester saw at their "
                f"rails exactly, the rest only if the tester missed them (p = {f.rate:.2g} per device: stuck rate x "
                f"P(march read outside the rail window)), at most {k} per column of {column} devices with P(more in any "
                f"of {f.columns} columns) <= 1e-3 (binomial, union bound)")
    return (f" + stuck devices at rates {n.stuck_on_rate:.2g} on / {n.stuck_off_rate:.2g} off: at most {k} per column of "
            f"{column} devices with P(more in any of {f.columns} columns) <= 1e-3 (binomial, union bound), each moving its "
            f"pair by up to its level's distance to the far rail (give the chip's measurement with --defects to use "
            f"what map-defects repaired)")


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


def random_inputs(image: Image, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs drawn uniformly inside the calibrated (or assumed) range of each graph input.

    One symbol is the batch (the first whose name says so, else the last
    symbolic dim of the first input that has one) and is ``samples`` in every
    input; every other symbolic dim is DEFAULT_SEQUENCE, so that inputs sharing
    a symbol agree. A batch the model's initializers fix (initial states of
    batch 3) was bound by the importer (``cimc.bound_dims``): it is an integer
    here, no symbol is the batch, and ``samples`` does not apply.
    """
    if samples < 1:
        raise CimcError(f"samples must be at least 1, got {samples}")
    specs = image.manifest["model"]["inputs"]
    program = image.program()
    ranges = program.attributes.get("input_ranges")
    symbols = [d for spec in specs for d in spec["shape"] if not isinstance(d, int)]
    no_batch = object()  # a dim no input has: the batch when the model fixes it
    batch = no_batch if program.attributes.get("bound_dims") else next(
        (d for d in symbols if isinstance(d, str) and "batch" in d.lower()),
        next(([d for d in spec["shape"] if not isinstance(d, int)][-1]
              for spec in specs if any(not isinstance(d, int) for d in spec["shape"])), None))
    shapes = [[d if isinstance(d, int) else samples if d == batch else DEFAULT_SEQUENCE for d in spec["shape"]]
              for spec in specs]
    check_allocation(sum(8 * math.prod(shape) for shape in shapes),  # rng.uniform draws float64
                     f"random inputs of shapes {shapes} (--samples {samples})")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i, (spec, shape) in enumerate(zip(specs, shapes)):
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


def _signature(values: Any, skip: set[str]) -> list[tuple[str, str, int | None]]:
    """(name, element type, rank) of ONNX graph inputs or outputs, as the image's manifest spells them."""
    out = []
    for v in values:
        if v.name in skip:
            continue
        t = v.type.tensor_type
        try:
            dtype = dtype_name(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        except (KeyError, ValueError, TypeError):
            dtype = f"onnx type {t.elem_type}"
        out.append((v.name, dtype, len(t.shape.dim) if t.HasField("shape") else None))
    return out


def _show(signature: list[tuple[str, str, int | None]]) -> str:
    return ", ".join(f"{n} {d}" + (f" rank {r}" if r is not None else "") for n, d, r in signature) or "none"


def check_model_matches(model_path: str | Path, image: Image) -> None:
    """Refuse a model whose graph inputs or outputs are not the image's; warn (stderr) when only its bytes differ.

    The names, element types and ranks must agree (compiling may fix symbolic
    dims, so extents are not compared); a model with the same interface but other
    bytes (weights changed, re-exported) is compared anyway, with a warning.
    """
    path = Path(model_path)
    model = load_onnx(path)
    initializers = {t.name for t in model.graph.initializer}
    for kind, values in (("inputs", model.graph.input), ("outputs", model.graph.output)):
        have = _signature(values, initializers if kind == "inputs" else set())
        want = [(v["name"], v["dtype"], len(v["shape"])) for v in image.manifest["model"][kind]]
        if [(n, d) for n, d, _ in have] != [(n, d) for n, d, _ in want] or \
                any(r is not None and r != w for (_, _, r), (_, _, w) in zip(have, want)):
            raise CimcError(f"{path.name} is not the model this image was compiled from: its {kind} are "
                            f"{_show(have)}, the image's are {_show(want)}")
    recorded = image.manifest["provenance"]["model"]
    if recorded["sha256"] is not None and recorded["sha256"] != hashlib.sha256(path.read_bytes()).hexdigest():
        print(f"warning: {path.name} differs from the model this image was compiled from ({recorded['name']}, sha256 "
              f"{recorded['sha256'][:12]}...): same inputs and outputs, other bytes; comparing anyway", file=sys.stderr)


def verify_image(model_path: str | Path, image: Image, inputs: Mapping[str, np.ndarray] | None = None,
                 samples: int = 8, options: SimulatorOptions | None = None, defects: ChipMeasurement | None = None,
                 labels: tuple[np.ndarray, str | None] | None = None) -> VerifyReport:
    """Run onnxruntime and the simulator on the same inputs and compare every output and every named layer.

    A model that is not the image's (other inputs or outputs) is refused first; see :func:`check_model_matches`.
    ``defects``: the measurement of the chip verified (noisy; ``cimc chip``), so that the bound knows its stuck
    devices. ``labels``: (integer labels, output or None) to score both runs' outputs with (``cimc.labels``).
    """
    check_model_matches(model_path, image)
    options = dataclasses.replace(options or SimulatorOptions(), counters=True)
    if defects is not None:
        check_measurement(image, defects, options)
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
    try:
        actual = simulator.run(feeds, observe, terminal_progress)
    except CimcError as e:
        if inputs is not None:
            raise
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
        raise CimcError(f"{e.message} (on random inputs {shapes}: each symbolic dim but the batch set to {DEFAULT_SEQUENCE}; "
                        "a model that runs only at the sizes it was exported with needs --inputs)") from e
    saturation, simulator.saturation = simulator.saturation, None  # the free-running run's counts; the per-step runs add none
    layer_names = [onnx_names[n] for n in named]
    print("running onnxruntime", file=sys.stderr)
    model = load_onnx(Path(model_path))
    producers = output_producers(model)
    step_operands = [n for node in recurrent_nodes(model).values() for n in operand_names(node)]
    expected = _reference(Path(model_path), feeds, layer_names + step_operands)
    names = [o["name"] for o in image.manifest["model"]["outputs"]]
    print("bounding the error", file=sys.stderr)
    label_report = None
    if labels is not None:
        scored = {"simulator": label_metrics(actual, labels[0], "--labels", labels[1], producers),
                  "onnxruntime": label_metrics({n: expected[n] for n in names}, labels[0], "--labels", labels[1],
                                               producers)}
        label_report = {who: m.to_dict() for who, m in scored.items()}
    steps: list[OutputReport] = []
    exact_rows: list[OutputReport] = []
    reference_out, reference = run_trajectory(Simulator(image, SimulatorOptions("exact")), feeds)
    exact_steps = step_bounds(image, feeds, Sources.for_fidelity("exact", image))
    onnx_rows = [compare_output(label, got, want, bound, "exact")
                 for label, got, want, bound in per_step_against_onnxruntime(model, expected, reference, exact_steps)]
    if options.fidelity == "exact":
        sources = Sources.for_fidelity("exact", image)
        _, bounds = output_bounds(image, feeds, sources)
        parts: list[tuple[str, dict[str, np.ndarray]]] = []
        enforced = bounds
    else:
        steps, exact_rows, sources, parts, enforced, bounds = _per_step(image, feeds, simulator, options, expected, names,
                                                                       reference_out, reference, producers, defects)
    outputs = [compare_output(n, actual[n], expected[n], bounds[n], options.fidelity, producers.get(n, "")) for n in names]
    stuck = stuck_summary(simulator) if options.fidelity == "noisy" else None
    description = derivation(options.fidelity, image, sources, parts, enforced, expected, stuck)
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
    return VerifyReport(options.fidelity, description, outputs, layers, steps, onnx_rows, exact_rows, saturation,
                        label_report)


def check_measurement(image: Image, m: ChipMeasurement, options: SimulatorOptions) -> None:
    """Refuse a measurement that is not of the chip and hardware verified (its stuck devices would be another's)."""
    if options.fidelity != "noisy":
        raise CimcError(f"--defects describes a chip's stuck devices; it needs --fidelity noisy, not {options.fidelity}")
    if m.seed != options.seed:
        raise CimcError(f"the measurement is of chip {m.seed}, but verify runs chip {options.seed} (--seed)")
    if m.hardware_sha256 != image.manifest["provenance"]["hardware_sha256"]:
        raise CimcError("the measurement was taken for other hardware than this image's (hardware_sha256 differs)")
    for k in image.array_indices():
        shape = image.device_levels(k).shape
        if k not in m.stuck or m.stuck[k].shape[0] < shape[0] or m.stuck[k].shape[1] < shape[1]:
            raise CimcError(f"the measurement does not cover array {k} of this image ({shape[0]} x {shape[1]} devices)")


def _per_step(image: Image, feeds: Mapping[str, np.ndarray], simulator: Simulator, options: SimulatorOptions,
              expected: Mapping[str, np.ndarray], names: list[str], reference_out: Mapping[str, np.ndarray],
              reference: Trajectory, producers: Mapping[str, str],
              defects: ChipMeasurement | None = None) -> tuple[list[OutputReport], list[OutputReport], Sources,
                                                                            list[tuple[str, dict[str, np.ndarray]]],
                                                                            dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Teacher-forced checks of a quantized fidelity (see ``cimc.stepwise``) and the exact reference against onnxruntime.

    Returns (per-step rows, exact rows, the sources of the enforced bound, its breakdown per source, the teacher-forced
    bound of the outputs, the free-running compounding bound of the outputs).
    """
    _, exact_bounds = output_bounds(image, feeds, Sources.for_fidelity("exact", image))
    exact_rows = [compare_output(n, reference_out[n], expected[n], exact_bounds[n], "exact", producers.get(n, ""))
                  for n in names]
    sigmas = 3.0
    if options.fidelity == "noisy":
        counting = dataclasses.replace(Sources.for_fidelity("noisy", image, 3.0, options.drift_time_s), faults=None)
        sigmas = tail_sigmas(step_bounds(image, feeds, counting).draws)
    sources = Sources.for_fidelity(options.fidelity, image, sigmas, options.drift_time_s, defects)
    forced_out, forced = run_trajectory(simulator, feeds, reference)
    bounds = step_bounds(image, feeds, sources)
    rows = [compare_output(f"{n} (per step)", forced_out[n], reference_out[n], bounds.outputs[n], options.fidelity,
                           producers.get(n, "")) for n in names]
    grouped: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for run, loop_bounds in zip(forced.runs, bounds.loops):
        for got, want, b in zip(run.steps, reference.runs[run.index].steps, loop_bounds):
            for j, values in enumerate(zip(got, want, b)):
                grouped.setdefault(run.label(j), []).append(values)  # type: ignore[arg-type]
    for label, triples in grouped.items():  # a loop run several times (nested) gives one row over all its runs
        got, want, b = (np.concatenate([np.ravel(v[k]) for v in triples]) for k in range(3))
        rows.append(compare_output(label, got, want, b, options.fidelity))
    parts = [(label, part.outputs) for label, part in breakdown(image, feeds, sources, step_bounds)]  # type: ignore[union-attr]
    _, free_bounds = output_bounds(image, feeds, sources)
    return rows, exact_rows, sources, parts, bounds.outputs, free_bounds


def _onnx_tensor_names(model_path: Path) -> dict[str, str]:
    """IR value name -> ONNX tensor name, for every float node output of the model."""
    model = onnx.load(str(model_path), load_external_data=False)
    names: dict[str, str] = {}
    for node in model.graph.node:
        for out in node.output:
            if out:
                names[legal_name(out) or out] = out
    return {k: v for k, v in names.items() if re.fullmatch(r"[A-Za-z0-9_.$]+", k)}
