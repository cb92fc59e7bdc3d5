"""The hardware description: arrays, devices, converters, non-idealities and costs.

The defaults ship as ``hardware_default.toml`` (with their sources) and a user
file overrides any subset. Loading validates the whole description, because a
configuration that cannot work (G_min >= G_max, zero levels, an array too
short to hold one ramp column) must be refused before any compilation starts.
"""

from __future__ import annotations

import copy
import functools
import math
import tomllib
from dataclasses import asdict, dataclass, fields
from importlib import resources as package_data
from pathlib import Path
from typing import Any

from cimc.diagnostics import CimcError


AUTO = "auto"
WRITE_VERIFY_KEYS = ("verify_iterations", "verify_tolerance_us")
SPARE_KEYS = ("spare_rows", "spare_cols", "spare_ramp_cols")


@dataclass(frozen=True)
class ArrayConfig:
    rows: int
    cols: int
    count: int | str  # a fixed number of arrays, or "auto": as many as the mapping needs
    spare_rows: int = 0  # word lines beyond ``rows``, used only by a defect-aware mapping
    spare_cols: int = 0  # bit lines beyond ``cols`` (whole G+/G- pairs), used only by a defect-aware mapping
    spare_ramp_cols: int = 0  # bit lines beyond those, where a defect-aware mapping may move a ramp column

    @property
    def physical_rows(self) -> int:
        """Word lines an array physically has: its rows, then the spare ones."""
        return self.rows + self.spare_rows

    @property
    def physical_cols(self) -> int:
        """Bit lines an array physically has: its columns, the spare weight pairs, then the spare ramp columns."""
        return self.cols + self.spare_cols + self.spare_ramp_cols

    @property
    def limit(self) -> int | None:
        """The most arrays a mapping may use: the fixed count, or None when the chip is sized to the model."""
        return None if self.count == AUTO else int(self.count)


@dataclass(frozen=True)
class DeviceConfig:
    g_min_us: float
    g_max_us: float
    levels: int
    read_voltage_v: float


@dataclass(frozen=True)
class ConverterConfig:
    dac_bits: int
    adc_bits: int
    nl_adc_bits: int
    ramp_calibration_devices: int
    analog_partial_sums: bool
    ramp_gains: tuple[float, ...]  # column-to-comparator current ratios a the readout offers (design choice)


@dataclass(frozen=True)
class NonidealityConfig:
    program_noise_us: float
    read_noise_rel: float
    stuck_on_rate: float
    stuck_off_rate: float
    drift_nu: float
    drift_t0_s: float
    vread_rel_std: float
    verify_iterations: int
    verify_tolerance_us: float


@dataclass(frozen=True)
class CostConfig:
    """Per-component energy, area and timing figures of the cost model (``cimc report``).

    Every figure's source and scaling rule is in ``hardware_default.toml``;
    ``docs/cost-model.md`` gives the formulas that use them. ``array_read_pj``
    and ``nl_adc_conversion_pj`` feed only fuse-activation's identity-column
    break-even, so that a cost-model refinement never changes a mapping.
    """

    clock_ghz: float
    supply_v: float
    cell_area_um2: float
    input_mean_square: float
    array_read_cycles: int
    line_cap_ff_per_cell: float
    dac_unit_cap_ff: float
    dac_cap_density_ff_per_um2: float
    dac_switch_area_um2: float
    column_readout_fj: float
    column_readout_area_um2: float
    column_bias_uw: float
    array_read_pj: float
    comparator_fj: float
    comparator_area_um2: float
    latch_fj_per_bit: float
    latch_area_um2_per_bit: float
    counter_fj_per_cycle: float
    ramp_generator_fj_per_cycle: float
    ramp_generator_area_um2: float
    nl_adc_conversion_pj: float
    sar_pj_8bit: float
    sar_area_um2_8bit: float
    sar_columns_per_adc: int
    digital_op_pj: float
    digital_activation_ops: int
    digital_lanes: int
    digital_lane_area_um2: float
    sram_pj_per_bit: float
    sram_area_um2_per_bit: float
    digital_word_bits: int

    @property
    def cycle_ns(self) -> float:
        return 1.0 / self.clock_ghz


@dataclass(frozen=True)
class Hardware:
    array: ArrayConfig
    device: DeviceConfig
    converters: ConverterConfig
    nonideality: NonidealityConfig
    cost: CostConfig

    @property
    def weight_cols_per_array(self) -> int:
        """Logical weight columns an array holds: each is a differential pair of bit lines."""
        return self.array.cols // 2

    def ramp_rows(self, bits: int | None = None) -> int:
        """Word lines one ramp column needs at ``bits``: one device per step plus the calibration devices."""
        n = self.converters.nl_adc_bits if bits is None else bits
        return (1 << n) - 1 + self.converters.ramp_calibration_devices

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return asdict(self)

    def to_toml(self) -> str:
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                if isinstance(value, bool):
                    text = "true" if value else "false"
                elif isinstance(value, tuple):
                    text = "[" + ", ".join(repr(v) for v in value) + "]"
                elif isinstance(value, str):
                    text = f'"{value}"'
                else:
                    text = repr(value)
                lines.append(f"{key} = {text}")
            lines.append("")
        return "\n".join(lines)


_CLASSES = {"array": ArrayConfig, "device": DeviceConfig, "converters": ConverterConfig,
            "nonideality": NonidealityConfig, "cost": CostConfig}


@functools.cache
def _default_tables() -> dict[str, dict[str, Any]]:
    """The shipped description, parsed once per process; read only (callers that merge into it take a copy)."""
    return tomllib.loads(package_data.files("cimc").joinpath("hardware_default.toml").read_text(encoding="utf-8"))


def _default_dict() -> dict[str, dict[str, Any]]:
    """A fresh copy of the shipped description (callers merge into it)."""
    return copy.deepcopy(_default_tables())


@functools.cache
def _default_hardware() -> Hardware:
    """The shipped description, built and validated once per process (a Hardware is immutable, so it is shared)."""
    return hardware_from_dict(_default_dict(), "the default hardware description")


def load_hardware(path: str | Path | None = None) -> Hardware:
    """The default description, overridden by the TOML file at ``path`` if given."""
    if path is None:
        return _default_hardware()
    merged = _default_dict()
    try:
        user = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise CimcError(f"cannot read hardware description {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CimcError(f"{path}: not a TOML file (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as e:
        raise CimcError(f"{path}: invalid TOML: {e}") from None
    for section, values in user.items():
        if section not in merged or not isinstance(values, dict):
            raise CimcError(f"{path}: unknown section [{section}] (sections: {', '.join(merged)})")
        for key, value in values.items():
            if key not in merged[section]:
                raise CimcError(f"{path}: unknown key '{key}' in [{section}] (keys: {', '.join(merged[section])})")
            merged[section][key] = value
    return hardware_from_dict(merged, str(path))


def with_cost_file(hw: Hardware, path: str | Path) -> Hardware:
    """``hw`` with its [cost] figures overridden by the [cost] table of the TOML file at ``path``.

    Cost figures do not describe the mapping, so an image can be re-costed
    under other figures without recompiling; any other section is refused.
    """
    try:
        user = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise CimcError(f"cannot read cost figures {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise CimcError(f"{path}: invalid TOML: {e}") from None
    other = sorted(set(user) - {"cost"})
    if other:
        raise CimcError(f"{path}: only a [cost] table can change without recompiling (found [{'], ['.join(other)}])")
    data = hw.to_dict()
    for key, value in user.get("cost", {}).items():
        if key not in data["cost"]:
            raise CimcError(f"{path}: unknown key '{key}' in [cost] (keys: {', '.join(data['cost'])})")
        data["cost"][key] = value
    return hardware_from_dict(data, str(path))


def hardware_from_dict(data: dict[str, dict[str, Any]], origin: str = "hardware description") -> Hardware:
    """Build and validate a :class:`Hardware` from nested dicts (TOML tables or an image's manifest)."""
    sections = {}
    for name, cls in _CLASSES.items():
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise CimcError(f"{origin}: [{name}] must be a table, got {values!r}")
        if name == "cost":
            # Cost figures do not describe the mapping: an image built before a figure existed still
            # loads, and is costed with the shipped default for it.
            values = {**_default_tables()["cost"], **values}
        elif name == "array":
            # The spare lines came later: an image built before them has none (its arrays are rows x cols).
            values = {**{k: 0 for k in SPARE_KEYS}, **values}
        elif name == "nonideality":
            # The write-verify keys came later: an image built before them is programmed with the shipped defaults.
            defaults = _default_tables()["nonideality"]
            values = {**{k: defaults[k] for k in WRITE_VERIFY_KEYS}, **values}
        kwargs = {}
        for f in fields(cls):
            if f.name not in values:
                raise CimcError(f"{origin}: [{name}] lacks '{f.name}'")
            value = values[f.name]
            if f.type == "int | str":
                if value != AUTO and (not isinstance(value, int) or isinstance(value, bool)):
                    raise CimcError(f"{origin}: [{name}] {f.name} must be an integer or \"{AUTO}\", got {value!r}")
                kwargs[f.name] = value
                continue
            if f.type == "tuple[float, ...]":
                if not isinstance(value, (list, tuple)) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) for v in value):
                    raise CimcError(f"{origin}: [{name}] {f.name} must be a list of numbers, got {value!r}")
                kwargs[f.name] = tuple(float(v) for v in value)
                continue
            expected = {"int": int, "float": float, "bool": bool}[f.type]  # type: ignore[index]
            if expected is float and isinstance(value, int) and not isinstance(value, bool) and _finite(value):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)) or \
                    (expected is float and not math.isfinite(value)):
                raise CimcError(f"{origin}: [{name}] {f.name} must be a finite {f.type}, got {value!r}"
                                if expected is float else f"{origin}: [{name}] {f.name} must be {f.type}, got {value!r}")
            kwargs[f.name] = value
        sections[name] = cls(**kwargs)
    hw = Hardware(**sections)
    _validate(hw, origin)
    return hw


def _finite(v: int | float) -> bool:
    """Whether a TOML/JSON number is a finite float (a JSON integer can be too large for one)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


# Upper ends that keep a description inside what this machine can simulate (design choices, not device limits): an
# image and a simulator hold about 10 bytes per device of every array, and the level index is stored as int16.
MAX_ARRAY_DEVICES = 1 << 24  # 4096 x 4096
MAX_ARRAYS = 1 << 20
MAX_LEVELS = 1 << 15


def _validate(hw: Hardware, origin: str) -> None:
    a, d, c, n = hw.array, hw.device, hw.converters, hw.nonideality
    problems = []
    if a.rows < 1 or a.cols < 2 or (a.limit is not None and a.limit < 1):
        problems.append(f"arrays must have at least 1 row, 2 columns and count 1 (got {a.rows} x {a.cols}, count {a.count})")
    if a.rows * a.cols > MAX_ARRAY_DEVICES or (a.limit is not None and a.limit > MAX_ARRAYS):
        problems.append(f"arrays of at most {MAX_ARRAY_DEVICES} devices and at most {MAX_ARRAYS} of them are supported "
                        f"(got {a.rows} x {a.cols}, count {a.count})")
    if any(not isinstance(getattr(a, k), int) or isinstance(getattr(a, k), bool) or getattr(a, k) < 0 for k in SPARE_KEYS):
        problems.append(f"spare_rows, spare_cols and spare_ramp_cols must be counts >= 0 (got {a.spare_rows}, "
                        f"{a.spare_cols}, {a.spare_ramp_cols})")
    elif a.spare_cols % 2:
        problems.append(f"spare_cols counts bit lines of whole G+/G- pairs, so it must be even (got {a.spare_cols})")
    elif a.physical_rows * a.physical_cols > MAX_ARRAY_DEVICES:
        problems.append(f"arrays of at most {MAX_ARRAY_DEVICES} devices, spares included, are supported")
    if not 0 <= d.g_min_us < d.g_max_us:
        problems.append(f"need 0 <= g_min_us < g_max_us (got g_min_us = {d.g_min_us}, g_max_us = {d.g_max_us})")
    if not 2 <= d.levels <= MAX_LEVELS:
        problems.append(f"levels must be at least 2 and at most {MAX_LEVELS} (got {d.levels})")
    if d.read_voltage_v <= 0:
        problems.append(f"read_voltage_v must be positive (got {d.read_voltage_v})")
    for key in ("dac_bits", "adc_bits", "nl_adc_bits"):
        if not 1 <= getattr(c, key) <= 16:
            problems.append(f"{key} must lie in 1..16 (got {getattr(c, key)})")
    if not c.ramp_gains or not all(math.isfinite(v) and v > 0 for v in c.ramp_gains):
        problems.append(f"ramp_gains must be a non-empty list of positive numbers (got {list(c.ramp_gains)})")
    if c.ramp_calibration_devices < 0:
        problems.append(f"ramp_calibration_devices cannot be negative (got {c.ramp_calibration_devices})")
    if 1 <= c.nl_adc_bits <= 16 and a.rows < hw.ramp_rows():
        problems.append(
            f"an array of {a.rows} rows cannot hold one {c.nl_adc_bits}-bit ramp column, which needs "
            f"{hw.ramp_rows()} rows ({(1 << c.nl_adc_bits) - 1} steps + {c.ramp_calibration_devices} calibration devices)")
    if a.cols < 3:
        problems.append(f"an array of {a.cols} columns cannot hold one weight column pair beside a ramp column")
    for key in ("stuck_on_rate", "stuck_off_rate"):
        if not 0 <= getattr(n, key) <= 1:
            problems.append(f"{key} must lie in [0, 1] (got {getattr(n, key)})")
    if n.stuck_on_rate + n.stuck_off_rate > 1:
        problems.append("stuck_on_rate + stuck_off_rate cannot exceed 1")
    if n.verify_iterations < 1:
        problems.append(f"verify_iterations must be at least 1 (got {n.verify_iterations})")
    for key in ("program_noise_us", "read_noise_rel", "drift_nu", "vread_rel_std", "verify_tolerance_us"):
        if getattr(n, key) < 0:
            problems.append(f"{key} cannot be negative (got {getattr(n, key)})")
    if n.drift_t0_s <= 0:
        problems.append(f"drift_t0_s must be positive (got {n.drift_t0_s})")
    cost = hw.cost
    for f in fields(cost):
        value = getattr(cost, f.name)
        if f.name == "input_mean_square":
            if not 0 < value <= 1:
                problems.append(f"[cost] input_mean_square must lie in (0, 1] (got {value})")
        elif f.type == "int" and value < 1:
            problems.append(f"[cost] {f.name} must be at least 1 (got {value})")
        elif f.type == "float" and not (math.isfinite(value) and value >= 0):
            problems.append(f"[cost] {f.name} must be a finite non-negative number (got {value})")
    if not cost.clock_ghz > 0 or not cost.supply_v > 0:
        problems.append(f"[cost] clock_ghz and supply_v must be positive (got {cost.clock_ghz}, {cost.supply_v})")
    if problems:
        raise CimcError(f"{origin}: impossible hardware configuration: " + "; ".join(problems))
