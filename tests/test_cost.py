"""The cost model (backends/cost, `cimc report`): each formula by hand, the events read from real images,
the baselines' ordering on both examples, the width sweep's closed forms, and byte-identical reports.

Every expected number below is computed by hand from the formula in docs/cost-model.md with the
parameters set in the test (not the shipped defaults, which may be refined). Pure float arithmetic
on a handful of terms: rel=1e-12 is well above the few-ulp rounding of such sums and far below
any real formula error.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

import cimc
from cimc.backends.cost import components as cc
from cimc.backends.cost.model import Scheme, price
from cimc.backends.cost.program import Conversion, Read, read_program
from cimc.backends.cost.report import cost_report
from cimc.backends.cost.sweep import parse_bits, sweep
from cimc.backends.cost.tables import format_report
from cimc.cli import main
from cimc.diagnostics import CimcError
from cimc.hardware import hardware_from_dict, load_hardware

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KWS = EXAMPLES / "kws"
CHARLM = EXAMPLES / "charlm"
REL = 1e-12


@pytest.fixture(scope="module")
def cost():
    """A [cost] table with round numbers, so each expected value below is easy to redo by hand."""
    base = load_hardware().cost
    return dataclasses.replace(
        base, supply_v=0.8, dac_unit_cap_ff=0.25, dac_cap_density_ff_per_um2=2.0, dac_switch_area_um2=0.5,
        line_cap_ff_per_cell=0.1, comparator_fj=4.0, comparator_area_um2=10.0, latch_fj_per_bit=1.0,
        latch_area_um2_per_bit=0.5, counter_fj_per_cycle=15.0, ramp_generator_fj_per_cycle=20.0,
        ramp_generator_area_um2=200.0, sar_pj_8bit=0.5, sar_area_um2_8bit=300.0, sar_columns_per_adc=8,
        digital_op_pj=0.05, sram_pj_per_bit=0.044, sram_area_um2_per_bit=0.117)


# -- each component formula against a hand-computed value ---------------------------------------------

def test_device_read_energy(cost) -> None:
    # 1000 uS at 0.2 V for 1 ns with <(v/Vread)^2> = 1/3: 1000 * 0.04 / 3 fJ.
    assert cc.device_read_fj(1000.0, 0.2, 1.0, 1 / 3) == pytest.approx(40.0 / 3, rel=REL)


def test_ramp_sweep_energy(cost) -> None:
    # Levels 10, 20, 30 uS over three 1 ns cycles at 0.2 V: (60 uS)(0.04 V^2)(1 ns) = 2.4 fJ.
    assert cc.ramp_sweep_fj([10.0, 20.0, 30.0], 0.2, 1.0) == pytest.approx(2.4, rel=REL)


def test_dac(cost) -> None:
    assert cc.dac_conversion_fj(cost, 8) == pytest.approx(256 * 0.25 * 0.64, rel=REL)      # 40.96 fJ
    assert cc.dac_conversion_fj(cost, 5) == pytest.approx(32 * 0.25 * 0.64, rel=REL)       # 5.12 fJ
    assert cc.dac_area_um2(cost, 8) == pytest.approx(256 * 0.25 / 2.0 + 8 * 0.5, rel=REL)  # 36 um^2


def test_word_line(cost) -> None:
    assert cc.word_line_fj(cost, 64, 0.2) == pytest.approx(64 * 0.1 * 0.04, rel=REL)


def test_ramp_converter(cost) -> None:
    assert cc.ramp_conversion_cycles(5) == 32 and cc.ramp_conversion_cycles(8) == 256
    assert cc.comparator_column_fj(cost, 5) == pytest.approx(32 * 4.0 + 5 * 1.0, rel=REL)   # 133 fJ
    assert cc.counter_sweep_fj(cost, 5) == pytest.approx(32 * 15.0, rel=REL)
    assert cc.ramp_generator_sweep_fj(cost, 8) == pytest.approx(256 * 20.0, rel=REL)
    # 32 columns x (10 + 5 x 0.5) + a 5-bit counter (2.5) + the generator (200).
    assert cc.ramp_converter_area_um2(cost, 32, 5, True) == pytest.approx(32 * 12.5 + 2.5 + 200.0, rel=REL)
    assert cc.ramp_converter_area_um2(cost, 32, 5, False) == pytest.approx(32 * 12.5 + 2.5, rel=REL)


def test_sar(cost) -> None:
    assert cc.sar_conversion_fj(cost, 8) == pytest.approx(500.0, rel=REL)
    assert cc.sar_conversion_fj(cost, 5) == pytest.approx(62.5, rel=REL)      # constant Walden FOM: / 2^3
    assert cc.sar_area_um2(cost, 5) == pytest.approx(300.0 * 5 / 8, rel=REL)
    assert cc.sar_adcs(cost, 32) == 4
    # 31 columns on 4 ADCs: 8 rounds of (5 + 1) cycles.
    assert cc.sar_conversion_cycles(cost, 31, 32, 5) == 48


def test_digital_and_buffers(cost) -> None:
    assert cc.digital_cycles(128, 6, 32) == 24 and cc.digital_cycles(33, 1, 32) == 2 and cc.digital_cycles(0, 6, 32) == 0
    assert cc.digital_fj(cost, 128, 6) == pytest.approx(128 * 6 * 50.0, rel=REL)
    assert cc.lut_bits(5, 2) == 2 * 32 * 5
    assert cc.sram_fj(cost, 100) == pytest.approx(4400.0, rel=REL)
    assert cc.sram_area_um2(cost, 1000) == pytest.approx(117.0, rel=REL)


# -- the images of both examples ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def kws():
    return cimc.compile(KWS / "kws_lstm.onnx", calib=KWS / "calib.npz").image


@pytest.fixture(scope="module")
def charlm(tmp_path_factory):
    x = np.load(CHARLM / "eval_set.npz")["ids"]
    calib = tmp_path_factory.mktemp("charlm") / "calib.npz"
    np.savez(calib, ids=x[:, :4])  # as examples/charlm/evaluate.py calibrates
    return cimc.compile(CHARLM / "charlm.onnx", calib=calib).image


def _events(block):
    for items in block.stages.values():
        for item in items:
            if hasattr(item, "body"):
                yield from _events(item.body)
            else:
                yield item


def test_kws_macs_per_step_are_the_lstm_weights(kws) -> None:
    # LSTM 40 -> 32: 4 gates x 32 units x (40 inputs + 32 recurrent) = 9,216 MACs per step (the paper's 1.125 kB).
    report = cost_report(kws, seq_len=49)
    step = report["schemes"]["nl_adc"]["per_step"]
    assert step["macs"] == 4 * 32 * (40 + 32)
    # Per inference: 49 steps + the 32 -> 12 classifier once.
    assert report["schemes"]["nl_adc"]["total"]["macs"] == 49 * 9216 + 32 * 12


def test_read_conductance_is_the_programmed_levels(kws) -> None:
    """A read's conductance sum equals G_min + level * dG over its formed devices, recomputed from the manifest."""
    program = read_program(kws, 1)
    d = kws.hardware.device
    delta = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    regions = {(a["index"], r["tile"]): r for a in kws.manifest["arrays"] for r in a["regions"] if r["kind"] == "weights"}
    checked = 0
    for event in _events(program.top):
        if not isinstance(event, Read):
            continue
        matches = [r for (k, _), r in regions.items() if k == event.array and r["bit_lines"][1] - r["bit_lines"][0] == 2 * event.weight_columns
                   and r["word_lines"][1] - r["word_lines"][0] == event.word_lines]
        region = matches[0]
        levels = kws.device_levels(event.array)[slice(*region["word_lines"]), slice(*region["bit_lines"])]
        expected = sum(d.g_min_us + int(v) * delta for v in levels.ravel() if v >= 0)
        assert event.conductance_us == pytest.approx(expected, rel=1e-9)
        checked += 1
    assert checked >= 6


def test_ramp_levels_are_cumulative_devices(kws) -> None:
    program = read_program(kws, 1)
    entry = kws.manifest["ramps"][0]
    ramp = program.ramps[entry["id"]]
    d = kws.hardware.device
    delta = (d.g_max_us - d.g_min_us) / (d.levels - 1)
    column = kws.device_levels(entry["array"])[:, entry["bit_line"]]
    g = [0.0 if v < 0 else d.g_min_us + int(v) * delta for v in column]
    c0, c1 = entry["calibration_rows"]
    assert len(ramp.cumulative_us) == 1 << entry["bits"]
    assert ramp.cumulative_us[0] == pytest.approx(sum(g[c0:c1]), rel=1e-12)
    # After every step, one step device more: the last level holds every step device.
    assert ramp.cumulative_us[-1] == pytest.approx(sum(g[c0:c1]) + sum(g[:sum(entry["step_devices"])]), rel=1e-12)
    assert all(b >= a for a, b in zip(ramp.cumulative_us, ramp.cumulative_us[1:]))


def _step_cycles(image, scheme: Scheme) -> tuple[int, int]:
    costed = price(read_program(image, 4), image.hardware, scheme)
    return costed.step.cycles, costed.step.ledger.activation_cycles


def test_kws_step_latency_closed_form(kws) -> None:
    """KWS (4 x 32 gates on 5 arrays, tanh(c_t) by identity column): the NL-ADC step is
    read (2) + gate conversion (2^N) + 2 digital stages (1 each) + identity read (2) + its conversion (2^N)
    + the output multiply (1) + the cell add (1); the baseline replaces both conversions' activations by
    digital cycles: 128 gate values on 32 lanes x 6 ops = 24 after the 2^N conversion, tanh(c_t) 32 values = 6."""
    hw = kws.hardware
    lanes, ops = hw.cost.digital_lanes, hw.cost.digital_activation_ops
    for bits in (3, 5):
        nl, nl_act = _step_cycles(kws, Scheme("nl_adc", True, "ramp", bits))
        base, base_act = _step_cycles(kws, Scheme("ramp", False, "ramp", bits))
        assert nl_act == 0
        assert base_act == math.ceil(128 / lanes) * ops + math.ceil(32 / lanes) * ops
        reads, digital = 2 * hw.cost.array_read_cycles, 4
        assert nl == reads + 2 * (1 << bits) + digital
        assert base == reads // 2 + (1 << bits) + base_act + digital
        # What the NL-ADC removes (the digital activation) and what it adds (the identity column's read + conversion).
        assert nl == base - base_act + hw.cost.array_read_cycles + (1 << bits)


@pytest.mark.parametrize("example", ["kws", "charlm"])
def test_baseline_ordering(example: str, request) -> None:
    """On both examples: the NL-ADC removes every digital-activation cycle and costs less energy in the
    nonlinear processing, and per time step, than either baseline (comparator sweeps instead of conversions
    + 6 digital ops). Per inference the SAR baseline can win on charlm: it also converts the classifier's
    16 x 77 linear outputs, where a SAR conversion is cheaper than a 256-step ramp; that is not the NL-ADC's part."""
    image = request.getfixturevalue(example)
    report = cost_report(image, seq_len=16)
    nl = report["schemes"]["nl_adc"]
    assert nl["per_step"]["digital_activation_cycles"] == 0
    for name in ("ramp_adc+digital", "sar_adc+digital"):
        base = report["schemes"][name]
        assert base["per_step"]["digital_activation_cycles"] > 0
        assert report["ratios"][name]["energy"]["nonlinear"] > 1
        assert base["per_step"]["energy_pj"] > nl["per_step"]["energy_pj"]
        assert report["ratios"][name]["latency"]["nonlinear"] is not None
    if example == "charlm":  # 640 activation values per step on 32 lanes: the digital activation dominates
        for name in ("ramp_adc+digital", "sar_adc+digital"):
            assert report["schemes"][name]["per_step"]["latency_ns"] > 1.5 * nl["per_step"]["latency_ns"]


def test_components_sum_to_totals(charlm) -> None:
    s = cost_report(charlm, seq_len=16)["schemes"]["nl_adc"]
    energy = sum(v["energy_pj"] for v in s["components"].values())
    area = sum(v["area_mm2"] for v in s["components"].values())
    assert energy == pytest.approx(s["total"]["energy_pj"], rel=1e-5)  # each term rounded to 6 digits
    assert area == pytest.approx(s["total"]["area_mm2"], rel=1e-5)
    assert s["total"]["tops_per_w"] == pytest.approx(s["total"]["ops"] / s["total"]["energy_pj"], rel=1e-5)
    assert s["total"]["power_mw"] == pytest.approx(s["total"]["energy_pj"] / s["total"]["latency_ns"], rel=1e-5)


def test_sweep_rows_and_cycles(kws) -> None:
    result = sweep(kws, [3, 4, 5, 8], seq_len=1)
    calibration = kws.hardware.converters.ramp_calibration_devices
    for row in result["sweep"]:
        bits = row["bits"]
        assert row["ramps"]["ramp_rows_max"] >= (1 << bits) - 1 + calibration
        assert row["ramps"]["fits"] == (row["ramps"]["ramp_rows_max"] <= kws.hardware.array.rows)
        nl = row["schemes"]["nl_adc"]["per_step"]["latency_ns"]
        assert nl == 2 * (1 << bits) + 8  # see test_kws_step_latency_closed_form, at 1 GHz
    assert [row["ramps"]["fits"] for row in result["sweep"]] == [True, True, True, False]
    # Fewer bits, fewer cycles: peak throughput falls monotonically with the width.
    peaks = [row["schemes"]["nl_adc"]["total"]["peak_tops"] for row in result["sweep"]]
    assert peaks == sorted(peaks, reverse=True)


def test_parse_bits() -> None:
    assert parse_bits("3,4,5,8") == [3, 4, 5, 8]
    for bad in ("3,x", "0", "3,3", "17"):
        with pytest.raises(CimcError):
            parse_bits(bad)


# -- the command --------------------------------------------------------------------------------------

def test_report_is_byte_identical(kws, tmp_path: Path, cimc_cli) -> None:
    image = tmp_path / "kws.cimg"
    kws.save(image)
    outputs = []
    for i, extra in enumerate(([], ["--json"], [], ["--json"])):
        out = tmp_path / f"r{i}.txt"
        assert main(["report", str(image), "--seq-len", "49", "--sweep-bits", "3,5", *extra, "-o", str(out)]) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[2] and outputs[1] == outputs[3]
    # A fresh process (another hash seed) gives the same bytes.
    fresh = cimc_cli("report", str(image), "--seq-len", "49", "--sweep-bits", "3,5", "--json")
    assert fresh.returncode == 0 and fresh.stdout.encode() == outputs[1]
    document = json.loads(outputs[1])
    for name in ("nl_adc", "ramp_adc+digital", "sar_adc+digital"):
        total = document["schemes"][name]["total"]
        assert {"area_mm2", "energy_pj", "latency_ns", "tops", "tops_per_w", "tops_per_mm2"} <= set(total)
        for component in document["schemes"][name]["components"].values():
            assert {"area_mm2", "energy_pj", "latency_ns", "tops", "tops_per_w", "tops_per_mm2"} <= set(component)
    assert [row["bits"] for row in document["sweep"]] == [3, 5]


def test_report_table_and_plots(kws, tmp_path: Path) -> None:
    text = format_report(cost_report(kws, seq_len=49))
    assert "== nl_adc ==" in text and "baseline / NL-ADC" in text and "digital-activation cycles per step: 30 -> 0" in text
    image = tmp_path / "kws.cimg"
    kws.save(image)
    assert main(["report", str(image), "--plots", str(tmp_path / "plots"), "--sweep-bits", "4,5", "-o",
                 str(tmp_path / "t.txt")]) == 0
    for name in ("energy", "area", "timeline", "sweep"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (["--sweep-bits", "3,x"], "--sweep-bits"),
    (["--bits", "0"], "bits must lie in 1..16"),
    (["--seq-len", "0"], "--seq-len"),
])
def test_bad_input_is_one_line_status_2(kws, tmp_path: Path, cimc_cli, args: list[str], message: str) -> None:
    image = tmp_path / "kws.cimg"
    kws.save(image)
    result = cimc_cli("report", str(image), *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_report_never_writes_over_its_input(kws, tmp_path: Path, cimc_cli) -> None:
    image = tmp_path / "kws.cimg"
    kws.save(image)
    before = image.read_bytes()
    result = cimc_cli("report", str(image), "-o", str(image))
    assert result.returncode == 2 and image.read_bytes() == before


# -- the hardware description's [cost] table ----------------------------------------------------------

def test_cost_table_validation_and_old_images() -> None:
    data = load_hardware().to_dict()
    data["cost"]["comparator_fj"] = -1.0
    with pytest.raises(CimcError, match="comparator_fj"):
        hardware_from_dict(data)
    data = load_hardware().to_dict()
    del data["cost"]["sram_pj_per_bit"]  # an image written before the figure existed
    assert hardware_from_dict(data).cost.sram_pj_per_bit == load_hardware().cost.sram_pj_per_bit


def test_identity_break_even_unchanged() -> None:
    """fuse-activation's identity-column break-even reads [cost] too; the cost model's figures must not move it."""
    from cimc.passes.fuse_activation import identity_break_even

    assert identity_break_even(load_hardware()) == 12


def test_static_sequence_length_is_read_from_the_program(kws) -> None:
    """A model compiled with a static time dim (49) runs its loop 49 times without --seq-len, as the symbolic
    one does with --seq-len 49: the trip count is read from Gather(Shape(features), 0)."""
    static = cimc.compile(KWS / "kws_lstm.onnx", calib=KWS / "calib.npz", input_shapes={"features": [49, None, 40]}).image
    fixed, given = cost_report(static), cost_report(kws, seq_len=49)
    assert not fixed["seq_len_used"] and given["seq_len_used"]
    assert fixed["schemes"]["nl_adc"]["total"] == given["schemes"]["nl_adc"]["total"]
    assert "sequence length fixed by the model" in format_report(fixed)


def test_recost_under_other_cost_figures(kws, tmp_path: Path, cimc_cli) -> None:
    """--cost re-prices the same image: 16 ops per digital activation instead of 6 scales the baseline's
    activation cycles by 16/6 per lane round (KWS: 4 + 1 rounds per step); anything but [cost] is refused."""
    image = tmp_path / "kws.cimg"
    kws.save(image)
    figures = tmp_path / "ops16.toml"
    figures.write_text("[cost]\ndigital_activation_ops = 16\n")
    result = cimc_cli("report", str(image), "--cost", str(figures), "--json")
    assert result.returncode == 0
    step = json.loads(result.stdout)["schemes"]["ramp_adc+digital"]["per_step"]
    assert step["digital_activation_cycles"] == (4 + 1) * 16
    mapping = tmp_path / "rows.toml"
    mapping.write_text("[array]\nrows = 256\n")
    refused = cimc_cli("report", str(image), "--cost", str(mapping))
    assert refused.returncode == 2 and "only a [cost] table" in refused.stderr
