"""Price a step program under a converter scheme: energy, area, latency, throughput, per component and layer.

A :class:`Scheme` says how activations and linear conversions are done. The
same :class:`~cimc.backends.cost.program.StepProgram` priced under the three
schemes of ``baselines.py`` gives the NL-ADC against conventional ADCs on one
mapping. Stages of a block run one after the other; within a stage, arrays
read and convert in parallel and the digital work of the stage shares the
``digital_lanes`` lanes (docs/cost-model.md, "Latency").
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from cimc.backends.cost import components as cc
from cimc.backends.cost.program import Block, Conversion, Digital, Loop, Read, StepProgram
from cimc.hardware import Hardware

# Components, in report order, and the level of the paper's Fig. 4f each belongs to. "nonlinear" items
# are tagged per event (a linear conversion of an activation's column is nonlinear processing).
COMPONENTS = ("crossbar", "dac_drivers", "column_readout", "ramp_columns", "nl_adc", "ramp_adc", "sar_adc",
              "digital_activation", "digital_elementwise", "buffers")
MAC_COMPONENTS = frozenset({"crossbar", "dac_drivers", "column_readout"})
LEVELS = ("mac_array", "nonlinear", "full_system")


@dataclass(frozen=True)
class Scheme:
    """How the mapped model's conversions are done.

    ``nl_adc``: fused activations convert in the NL-ADC against their ramp
    columns (as compiled); otherwise each becomes a linear conversion by
    ``linear_adc`` followed by a digital activation, and an identity column's
    read and conversion become a digital activation of the digital value.
    ``bits``: the width of every NL-ADC conversion (and of the linear
    conversions that replace them); None keeps the compiled widths.
    ``dac_bits``: the input DAC width (the paper's "in" precision).
    """

    name: str
    nl_adc: bool
    linear_adc: str  # "ramp" or "sar"
    bits: int | None = None
    dac_bits: int | None = None  # input DAC width; None keeps the hardware's

    def dac_width(self, hw: Hardware) -> int:
        return self.dac_bits if self.dac_bits is not None else hw.converters.dac_bits


@dataclass
class Ledger:
    """Energy in fJ keyed by (component, layer, nonlinear?), the MACs done, the digital activation cycles.

    "nonlinear" marks the energy of turning an activation's column into its value (levels of Fig. 4f).
    """

    energy: dict[tuple[str, str, bool], float] = field(default_factory=lambda: defaultdict(float))
    macs: int = 0
    activation_cycles: int = 0   # digital activation cycles (a stage waits for them after its conversions)

    def add(self, component: str, layer: str, fj: float, nonlinear: bool = False) -> None:
        if fj:
            self.energy[(component, layer, nonlinear)] += fj

    def merge(self, other: Ledger, times: int) -> None:
        for key, fj in other.energy.items():
            self.energy[key] += fj * times
        self.macs += other.macs * times
        self.activation_cycles += other.activation_cycles * times


@dataclass(frozen=True)
class Phase:
    """A stretch of the timeline: ``cycles`` of ``what`` for ``layer``, starting at ``start``."""

    stage: int
    start: int
    cycles: int
    what: str
    layer: str


@dataclass
class BlockCost:
    """One execution of a block: its energy ledger and its critical path, by phase kind and by layer."""

    ledger: Ledger
    cycles: int
    cycles_by: dict[str, int]
    cycles_by_layer: dict[str, int]
    timeline: list[Phase]


@dataclass
class Costed:
    """One scheme's costs of one inference (energies in fJ, areas in um^2, times in cycles)."""

    scheme: Scheme
    total: BlockCost
    step: BlockCost | None                     # the costliest loop's body (one time step), if any
    step_layer: str | None
    area: dict[tuple[str, str, bool], float]   # (component, layer, nonlinear?) -> um^2
    ramp_rows: dict[int, int]                  # ramp id -> word lines at the scheme's bits
    cycle_ns: float


@dataclass
class _Candidate:
    """One way a stage could be long; the longest sets the stage."""

    cycles: int
    by: dict[str, int]
    by_layer: dict[str, int]
    parts: list[tuple[str, int, str]]  # (what, cycles, layer) in time order


class Pricer:
    """Prices the events of one program under one scheme (energy into a :class:`Ledger`, time per stage)."""

    def __init__(self, program: StepProgram, hw: Hardware, scheme: Scheme) -> None:
        self.p = program
        self.hw = hw
        self.c = hw.cost
        self.scheme = scheme

    def bits_of(self, conv: Conversion) -> int:
        return self.scheme.bits if (conv.nonlinear and self.scheme.bits is not None) else conv.bits

    # -- energy and time of one stage ------------------------------------------------------------------
    def stage(self, items: list, ledger: Ledger) -> _Candidate:
        c, hw = self.c, self.hw
        vread = self.p.read_voltage_v
        phases: list[_Candidate] = []
        reads: dict[int, list[Read]] = defaultdict(list)
        convs: dict[int, list[Conversion]] = defaultdict(list)
        digital_ops = 0
        digital_act_values = 0
        act_layer = digital_layer = ""
        for item in items:
            if isinstance(item, Loop):
                inner = self.block(item.body)
                ledger.merge(inner.ledger, item.trips)
                phases.append(_Candidate(inner.cycles * item.trips, {k: v * item.trips for k, v in inner.cycles_by.items()},
                                         {k: v * item.trips for k, v in inner.cycles_by_layer.items()},
                                         [("loop", inner.cycles * item.trips, item.layer)]))
            elif isinstance(item, Read):
                if item.identity and not self.scheme.nl_adc:
                    continue  # the baseline computes this activation digitally from the digital value
                reads[item.array].append(item)
            elif isinstance(item, Conversion):
                if item.nonlinear and not self.scheme.nl_adc:
                    values = item.columns * item.vectors
                    ledger.add("digital_activation", item.layer, cc.digital_fj(c, values, c.digital_activation_ops), True)
                    digital_act_values += values
                    act_layer = item.layer
                    if item.of_identity:
                        continue
                convs[item.array].append(item)
            elif isinstance(item, Digital):
                if item.activation:
                    ledger.add("digital_activation", item.layer, cc.digital_fj(c, item.values, c.digital_activation_ops), True)
                    digital_act_values += item.values
                    act_layer = item.layer
                else:
                    ledger.add("digital_elementwise", item.layer, cc.digital_fj(c, item.values, 1))
                    digital_ops += item.values
                    digital_layer = digital_layer or item.layer
        fetched: set[tuple[str, ...]] = set()
        for _, group in sorted(reads.items()):
            vectors = max(r.vectors for r in group)
            word_lines = max(r.word_lines for r in group)
            layer = group[0].layer
            if group[0].inputs not in fetched:  # one buffer read of a vector broadcast to every array that reads it
                fetched.add(group[0].inputs)
                ledger.add("buffers", layer, vectors * cc.sram_fj(c, word_lines * self.scheme.dac_width(hw)))
            for r in group:
                ledger.add("crossbar", r.layer, r.vectors * cc.device_read_fj(
                    r.conductance_us, vread, c.cycle_ns, c.input_mean_square))
                ledger.add("column_readout", r.layer, r.vectors * (r.weight_columns * c.column_readout_fj + cc.column_bias_fj(
                    c, r.weight_columns, c.array_read_cycles)))
                ledger.macs += r.macs * r.vectors
            per_vector = word_lines * (cc.dac_conversion_fj(c, self.scheme.dac_width(hw)) + cc.word_line_fj(c, self.p.cols, vread))
            ledger.add("dac_drivers", layer, vectors * per_vector)
            phases.append(_single("read", vectors * c.array_read_cycles, layer))
        converting: _Candidate | None = None
        for _, group in sorted(convs.items()):
            candidate = self.convert(group, ledger)
            phases.append(candidate)
            if converting is None or candidate.cycles > converting.cycles:
                converting = candidate
        digital = cc.digital_cycles(digital_ops, 1, c.digital_lanes)
        activation = cc.digital_cycles(digital_act_values, c.digital_activation_ops, c.digital_lanes)
        ledger.activation_cycles += activation
        if activation:  # a replaced activation needs its conversion's codes: it follows the longest conversion
            before = converting or _Candidate(0, {}, {}, [])
            phases.append(_Candidate(before.cycles + activation, {**before.by, "digital activation": activation},
                                     _plus(before.by_layer, act_layer, activation),
                                     before.parts + [("digital activation", activation, act_layer)]))
        if digital:
            phases.append(_single("digital", digital, digital_layer))
        return max(phases, key=lambda ph: ph.cycles, default=_Candidate(0, {}, {}, []))  # the first of equals

    def convert(self, group: list[Conversion], ledger: Ledger) -> _Candidate:
        """All conversions of one array in one stage: they share the array's counter, ramps and ADCs."""
        c = self.c
        vectors = max(v.vectors for v in group)
        layer = group[0].layer
        cycles = 0
        linear_ramp_bits = 0
        counter_bits = 0
        swept: set[int] = set()
        held: list[tuple[Conversion, str]] = []
        weight_columns = self.p.cols // 2
        for conv in group:
            bits = self.bits_of(conv)
            if conv.nonlinear and self.scheme.nl_adc:
                held.append((conv, "nl_adc"))
                ledger.add("nl_adc", conv.layer, conv.vectors * conv.columns * cc.comparator_column_fj(c, bits), True)
                counter_bits = max(counter_bits, bits)
                if conv.ramp is not None and conv.ramp not in swept:
                    swept.add(conv.ramp)
                    ramp = self.p.ramps[conv.ramp]
                    scale = (1 << bits) / (1 << ramp.bits)  # the same z range in 2^N steps: mean level unchanged
                    sweep = cc.ramp_sweep_fj(list(ramp.cumulative_us), self.p.read_voltage_v, c.cycle_ns) * scale
                    broadcast = (1 << bits) * c.column_readout_fj  # the ramp line's readout, once per step
                    ledger.add("ramp_columns", conv.layer, conv.vectors * (sweep + broadcast), True)
                cycles = max(cycles, cc.ramp_conversion_cycles(bits))
            elif self.scheme.linear_adc == "sar":
                held.append((conv, "sar_adc"))
                ledger.add("sar_adc", conv.layer, conv.vectors * conv.columns * cc.sar_conversion_fj(c, bits), conv.nonlinear)
                cycles = max(cycles, cc.sar_conversion_cycles(c, conv.columns, weight_columns, bits))
            else:
                held.append((conv, "ramp_adc"))
                ledger.add("ramp_adc", conv.layer, conv.vectors * conv.columns * cc.comparator_column_fj(c, bits), conv.nonlinear)
                linear_ramp_bits = max(linear_ramp_bits, bits)
                counter_bits = max(counter_bits, bits)
                cycles = max(cycles, cc.ramp_conversion_cycles(bits))
            ledger.add("buffers", conv.layer, conv.vectors * cc.sram_fj(c, conv.columns * bits))
        any_nl = any(v.nonlinear for v in group)
        if counter_bits:
            component = "nl_adc" if (self.scheme.nl_adc and any_nl) else "ramp_adc"
            ledger.add(component, layer, vectors * cc.counter_sweep_fj(c, counter_bits), any_nl)
        if linear_ramp_bits:
            ledger.add("ramp_adc", layer, vectors * cc.ramp_generator_sweep_fj(c, linear_ramp_bits), any_nl)
        # Each column's readout holds its value until the array's conversions end: a cost of the conversion's
        # duration, so it is priced with the converter (the MAC array level keeps only what a read costs).
        for conv, component in held:
            ledger.add(component, conv.layer, conv.vectors * cc.column_bias_fj(c, conv.columns, cycles), conv.nonlinear)
        return _single("nonlinear convert" if any_nl else "linear convert", vectors * cycles, layer)

    def block(self, block: Block) -> BlockCost:
        ledger = Ledger()
        cycles = 0
        by: dict[str, int] = defaultdict(int)
        by_layer: dict[str, int] = defaultdict(int)
        timeline = []
        for index in sorted(block.stages):
            candidate = self.stage(block.stages[index], ledger)
            start = cycles
            for what, n, layer in candidate.parts:
                timeline.append(Phase(index, start, n, what, layer))
                start += n
            cycles += candidate.cycles
            for key, n in candidate.by.items():
                by[key] += n
            for key, n in candidate.by_layer.items():
                by_layer[key] += n
        return BlockCost(ledger, cycles, dict(by), dict(by_layer), timeline)

    # -- area -------------------------------------------------------------------------------------------
    def ramp_rows(self) -> dict[int, int]:
        """Word lines of each ramp at the scheme's bits: 2^N - 1 steps, the wide ones doubled, + calibration."""
        out = {}
        calibration = self.hw.converters.ramp_calibration_devices
        for rid, ramp in self.p.ramps.items():
            bits = self.scheme.bits or ramp.bits
            doubled = round(ramp.two_device_steps * ((1 << bits) - 1) / ((1 << ramp.bits) - 1))
            out[rid] = (1 << bits) - 1 + doubled + calibration if bits != ramp.bits else ramp.rows
        return out

    def area(self, program_convs: dict[int, list[Conversion]], digital_functions: set[str]) -> tuple[
            dict[tuple[str, str, bool], float], dict[int, int]]:
        c, hw, p = self.c, self.hw, self.p
        area: dict[tuple[str, str, bool], float] = defaultdict(float)
        weight_columns = p.cols // 2
        ramp_rows = self.ramp_rows() if self.scheme.nl_adc else {}
        ramps_on: dict[int, int] = defaultdict(int)
        ramp_devices: dict[int, int] = defaultdict(int)
        for rid, rows in ramp_rows.items():
            ramps_on[p.ramps[rid].array] += 1
            ramp_devices[p.ramps[rid].array] += rows
        for k in p.arrays:
            layer = p.array_layer[k]
            area[("crossbar", layer, False)] += (p.rows * p.cols - ramp_devices[k]) * c.cell_area_um2
            if ramp_devices[k]:
                area[("ramp_columns", layer, True)] += ramp_devices[k] * c.cell_area_um2 + ramps_on[k] * c.column_readout_area_um2
            area[("dac_drivers", layer, False)] += p.rows * cc.dac_area_um2(c, self.scheme.dac_width(hw))
            area[("column_readout", layer, False)] += weight_columns * c.column_readout_area_um2
            convs = program_convs.get(k, [])
            if not convs:
                continue
            nonlinear = any(v.nonlinear for v in convs)
            digital_only = all(v.of_identity and v.nonlinear for v in convs) and not self.scheme.nl_adc
            if digital_only:
                continue
            bits = max(self.bits_of(v) for v in convs if not (v.of_identity and not self.scheme.nl_adc))
            if self.scheme.nl_adc and nonlinear:
                generator = any(not v.nonlinear for v in convs)
                area[("nl_adc", layer, True)] += cc.ramp_converter_area_um2(c, weight_columns, bits, False)
                if generator:
                    area[("ramp_adc", layer, False)] += c.ramp_generator_area_um2
            elif self.scheme.linear_adc == "sar":
                area[("sar_adc", layer, nonlinear)] += cc.sar_adcs(c, weight_columns) * cc.sar_area_um2(c, bits)
            else:
                area[("ramp_adc", layer, nonlinear)] += cc.ramp_converter_area_um2(c, weight_columns, bits, True)
        area[("digital_elementwise", "(shared)", False)] += c.digital_lanes * c.digital_lane_area_um2
        if digital_functions:
            lut = cc.lut_bits(self.lut_bits(program_convs), len(digital_functions))
            area[("digital_activation", "(shared)", True)] += c.digital_lanes * cc.sram_area_um2(c, lut)
        return dict(area), ramp_rows

    def lut_bits(self, program_convs: dict[int, list[Conversion]]) -> int:
        widths = [self.bits_of(v) for vs in program_convs.values() for v in vs if v.nonlinear]
        return max(widths, default=self.hw.converters.adc_bits)


def _single(what: str, cycles: int, layer: str) -> _Candidate:
    return _Candidate(cycles, {what: cycles}, {layer: cycles}, [(what, cycles, layer)])


def _plus(by_layer: dict[str, int], layer: str, cycles: int) -> dict[str, int]:
    out = dict(by_layer)
    out[layer] = out.get(layer, 0) + cycles
    return out


def _walk_events(block: Block):  # noqa: ANN202
    for items in block.stages.values():
        for item in items:
            if isinstance(item, Loop):
                yield from _walk_events(item.body)
            else:
                yield item


def _loops(block: Block):  # noqa: ANN202
    for items in block.stages.values():
        for item in items:
            if isinstance(item, Loop):
                yield item
                yield from _loops(item.body)


def _buffer_bits(program: StepProgram, hw: Hardware, pricer: Pricer) -> int:
    """Double-buffered storage of the heaviest block's per-execution traffic (inputs to arrays, converter codes, state)."""
    def traffic(block: Block) -> int:
        bits = 0
        for items in block.stages.values():
            for item in items:
                if isinstance(item, Read):
                    bits += item.word_lines * pricer.scheme.dac_width(hw)
                elif isinstance(item, Conversion):
                    bits += item.columns * pricer.bits_of(item)
                elif isinstance(item, Digital):
                    bits += item.values * hw.cost.digital_word_bits
        return bits
    blocks = [loop.body for loop in _loops(program.top)] or [program.top]
    return 2 * max(traffic(b) for b in blocks)


def price(program: StepProgram, hw: Hardware, scheme: Scheme) -> Costed:
    """Every cost of one inference of ``program`` under ``scheme``."""
    pricer = Pricer(program, hw, scheme)
    total = pricer.block(program.top)
    loops = list(_loops(program.top))
    step, step_layer = None, None
    if loops:
        costed = [(pricer.block(loop.body), loop) for loop in loops]
        step, loop = max(costed, key=lambda bl: bl[0].cycles * bl[1].trips)
        step_layer = loop.layer
    convs: dict[int, list[Conversion]] = defaultdict(list)
    functions: set[str] = set()
    for event in _walk_events(program.top):
        if isinstance(event, Conversion):
            convs[event.array].append(event)
            if event.nonlinear and not scheme.nl_adc:
                functions.add(event.function or "")
        elif isinstance(event, Digital) and event.activation:
            functions.add(event.function or "")
    area, ramp_rows = pricer.area(convs, functions)
    buffer_bits = _buffer_bits(program, hw, pricer)
    area[("buffers", "(shared)", False)] = cc.sram_area_um2(hw.cost, buffer_bits)
    return Costed(scheme, total, step, step_layer, area, ramp_rows, hw.cost.cycle_ns)
