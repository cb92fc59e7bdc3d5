"""Closed-form energy, area and time of each hardware component, one function per formula.

Units: energy in fJ (a conductance in uS times V^2 times ns is exactly 1 fJ),
area in um^2, time in clock cycles. The model (``model.py``) converts to pJ,
mm^2 and ns at the end, so every formula here can be checked by hand against
``docs/cost-model.md``. Parameters are the ``[cost]`` figures of the hardware
description; nothing here knows the paper's Table 1.
"""

from __future__ import annotations

import math

from cimc.hardware import CostConfig


def device_read_fj(conductance_sum_us: float, read_voltage_v: float, window_ns: float, mean_square: float) -> float:
    """Energy the devices of a read dissipate: sum(G) * <v^2> * t, with <v^2> = mean_square * Vread^2.

    The row voltage of input x is x * Vread / x_max, so a device's power is
    G (x Vread / x_max)^2; averaged over inputs that is mean_square * G Vread^2.
    """
    return conductance_sum_us * mean_square * read_voltage_v ** 2 * window_ns


def ramp_sweep_fj(cumulative_us: list[float], read_voltage_v: float, cycle_ns: float) -> float:
    """Energy of one in-memory ramp sweep: at cycle k the ramp column conducts G_cum(k) at the full Vread.

    ``cumulative_us`` lists the ramp column's conductance at each of its 2^N
    cycles (the calibration devices, then one more step device per cycle).
    """
    return sum(cumulative_us) * read_voltage_v ** 2 * cycle_ns


def dac_conversion_fj(c: CostConfig, bits: int) -> float:
    """A capacitive N-bit DAC switches up to 2^N unit capacitors over the supply: 2^N C_u VDD^2."""
    return (1 << bits) * c.dac_unit_cap_ff * c.supply_v ** 2


def dac_area_um2(c: CostConfig, bits: int) -> float:
    """2^N unit capacitors at the capacitor density, plus one switch per bit."""
    return (1 << bits) * c.dac_unit_cap_ff / c.dac_cap_density_ff_per_um2 + bits * c.dac_switch_area_um2


def word_line_fj(c: CostConfig, bit_lines: int, read_voltage_v: float) -> float:
    """Charging one word line that crosses ``bit_lines`` devices to the read voltage: C_line Vread^2."""
    return bit_lines * c.line_cap_ff_per_cell * read_voltage_v ** 2


def column_bias_fj(c: CostConfig, columns: int, cycles: int) -> float:
    """Static power of ``columns`` column readouts over ``cycles`` clock cycles (uW x ns = fJ)."""
    return columns * c.column_bias_uw * cycles * c.cycle_ns


def comparator_column_fj(c: CostConfig, bits: int) -> float:
    """One column's share of a ramp conversion: a comparator decision at each of 2^N cycles, N latched bits.

    The comparator is clocked at every ramp step of the sweep (it is not
    gated off after it flips), so this is the cost whatever the column's value.
    """
    return (1 << bits) * c.comparator_fj + bits * c.latch_fj_per_bit


def ramp_conversion_cycles(bits: int) -> int:
    """A ramp (linear or in-memory nonlinear) sweeps 2^N steps, one per clock."""
    return 1 << bits


def counter_sweep_fj(c: CostConfig, bits: int) -> float:
    """The array's counter runs through 2^N counts, driving its bus to the column latches at every count."""
    return (1 << bits) * c.counter_fj_per_cycle


def ramp_generator_sweep_fj(c: CostConfig, bits: int) -> float:
    """A linear ramp ADC's CMOS ramp generator is on for the 2^N cycles of a sweep."""
    return (1 << bits) * c.ramp_generator_fj_per_cycle


def ramp_converter_area_um2(c: CostConfig, columns: int, bits: int, generator: bool) -> float:
    """Comparators and N-bit latches on ``columns`` columns, an N-bit counter, and a CMOS ramp generator if linear."""
    per_column = c.comparator_area_um2 + bits * c.latch_area_um2_per_bit
    return columns * per_column + bits * c.latch_area_um2_per_bit + (c.ramp_generator_area_um2 if generator else 0.0)


def sar_conversion_fj(c: CostConfig, bits: int) -> float:
    """At a constant Walden figure of merit, a SAR conversion costs in proportion to 2^N."""
    return 1000.0 * c.sar_pj_8bit * 2.0 ** (bits - 8)


def sar_area_um2(c: CostConfig, bits: int) -> float:
    """A low-resolution SAR ADC is dominated by its comparator and logic, which grow with N."""
    return c.sar_area_um2_8bit * bits / 8.0


def sar_adcs(c: CostConfig, weight_columns: int) -> int:
    """SAR ADCs an array with ``weight_columns`` column pairs gets, one per ``sar_columns_per_adc`` columns."""
    return math.ceil(weight_columns / c.sar_columns_per_adc)


def sar_conversion_cycles(c: CostConfig, columns: int, weight_columns: int, bits: int) -> int:
    """``columns`` conversions on one array: each ADC converts its share in turn, N + 1 cycles each (sample + N bits)."""
    return math.ceil(columns / sar_adcs(c, weight_columns)) * (bits + 1)


def digital_cycles(values: int, ops_per_value: int, lanes: int) -> int:
    """``values`` results on ``lanes`` lanes at one op per lane per cycle."""
    return math.ceil(values / lanes) * ops_per_value if values else 0


def digital_fj(c: CostConfig, values: int, ops_per_value: int) -> float:
    return 1000.0 * c.digital_op_pj * values * ops_per_value


def lut_bits(bits: int, functions: int) -> int:
    """One 2^N-entry table of N-bit outputs per activation function, per lane (each lane reads its own)."""
    return functions * (1 << bits) * bits


def sram_fj(c: CostConfig, bits: int) -> float:
    return 1000.0 * c.sram_pj_per_bit * bits


def sram_area_um2(c: CostConfig, bits: int) -> float:
    return c.sram_area_um2_per_bit * bits
