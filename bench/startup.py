"""Start-up and CLI latency of the everyday commands on the shipped KWS model, against an import floor.

    python bench/startup.py [--repeat 7] [--base OTHER_VENV/bin/python]

A small model compiles in a fraction of a second of passes; what a user waits for
on it is mostly the start of the process: the interpreter, the imports (numpy,
onnx, networkx, cimc), the default hardware file, the pass registry. This script
times, in fresh processes, each everyday command on ``examples/kws``:

* ``cimc compile kws_lstm.onnx -o K.cimg``;
* ``cimc run K.cimg --inputs verify_inputs.npz -o OUT.npz``;
* ``cimc verify kws_lstm.onnx K.cimg --inputs verify_inputs.npz``;
* ``cimc dump K.cimg``;
* ``cimc --help``;

against a floor measured in the same run: a fresh ``python -c "import numpy, onnx"``
(what any tool that reads ONNX into arrays pays before its first line of work), and
for ``verify``, which runs onnxruntime as its reference, ``import numpy, onnx,
onnxruntime``. It prints the median wall and CPU (user + system) time of --repeat
runs of each, their ratios to the floor, and the median peak resident memory.
CPU time is the steadier of the two on a shared machine. A ratio below 1 means the
command does not even import what the floor imports (``dump`` and ``--help`` need
no onnx; ``run`` reads only the image and the inputs).

With ``--base PYTHON`` (the interpreter of another venv with cimc installed, e.g.
of an older commit), every command also runs under that install, interleaved with
this one's run by run (so that a change in the machine's load hits both alike),
and the table adds the base's medians and this/base ratios.

Every process runs with compiled bytecode, as an installed package does: the
children get ``PYTHONPYCACHEPREFIX`` set to a folder of this run (and
``PYTHONDONTWRITEBYTECODE`` removed), and each command runs once untimed first,
so that no timed run compiles a ``.py`` file (an environment that forbids bytecode
would otherwise add ~0.2 s of compiling cimc's sources to every command).
Every command must exit 0 (verify: within its tolerance), or the script stops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

KWS = Path(__file__).resolve().parent.parent / "examples" / "kws"
FLOOR = "import numpy, onnx"
FLOOR_ORT = "import numpy, onnx, onnxruntime"
COMMANDS = ("compile", "run", "verify", "dump", "--help")


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds
    cpu: float  # user + system seconds of the child
    peak_mb: float  # ru_maxrss of the child


def run_once(argv: list[str], env: dict[str, str], cwd: Path) -> Sample:
    """One fresh process: wall time around it, and its own CPU time and peak memory from wait4."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty child cannot block on a full pipe
        start = time.perf_counter()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{' '.join(argv)} exited {process.returncode}:\n{stderr.read().decode(errors='replace')}")
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def cimc_argv(python: str) -> list[str]:
    """The ``cimc`` console script beside ``python`` (what users run), else ``python -m cimc``."""
    script = Path(python).parent / "cimc"
    return [str(script)] if script.is_file() else [python, "-m", "cimc"]


def commands(python: str, work: Path) -> dict[str, list[str]]:
    """Each timed command of one install (keyed as in COMMANDS), on its own image and output in ``work``."""
    cimc = cimc_argv(python)
    model, inputs, image = str(KWS / "kws_lstm.onnx"), str(KWS / "verify_inputs.npz"), str(work / "kws.cimg")
    return {
        "compile": cimc + ["compile", model, "-o", str(work / "kws_timed.cimg")],
        "run": cimc + ["run", image, "--inputs", inputs, "-o", str(work / "out.npz")],
        "verify": cimc + ["verify", model, image, "--inputs", inputs],
        "dump": cimc + ["dump", image],
        "--help": cimc + ["--help"],
    }


def floor_of(command: str) -> str:
    return FLOOR_ORT if command == "verify" else FLOOR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of each command (default 7; medians)")
    parser.add_argument("--base", metavar="PYTHON", help="also time the commands under this interpreter's cimc, "
                                                         "interleaved, and print this/base ratios")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    with tempfile.TemporaryDirectory(prefix="cimc-startup-") as tmp:
        root = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        installs = {"this": sys.executable} | ({"base": args.base} if args.base else {})
        jobs: dict[tuple[str, str], list[str]] = {}
        for name, python in installs.items():
            work = root / name
            work.mkdir()
            cmds = commands(python, work)
            # The image run, verify and dump read: compiled by the same install (also the untimed first compile).
            run_once(cimc_argv(python) + ["compile", str(KWS / "kws_lstm.onnx"), "-o", str(work / "kws.cimg")],
                     env, work)
            for command, argv in cmds.items():
                jobs[(name, command)] = argv
        for floor in (FLOOR, FLOOR_ORT):
            jobs[("floor", floor)] = [sys.executable, "-c", floor]
        for argv in jobs.values():  # untimed: writes the bytecode cache, warms the page cache
            run_once(argv, env, root)

        samples: dict[tuple[str, str], list[Sample]] = {key: [] for key in jobs}
        for _ in range(args.repeat):
            for key, argv in jobs.items():  # round-robin: every command sees the same spread of machine load
                samples[key].append(run_once(argv, env, root))

    def median(key: tuple[str, str], what: str) -> float:
        return statistics.median(getattr(s, what) for s in samples[key])

    print(f"fresh processes, medians of {args.repeat} runs; model {KWS / 'kws_lstm.onnx'}")
    for floor in (FLOOR, FLOOR_ORT):
        key = ("floor", floor)
        print(f"floor `python -c \"{floor}\"`: {median(key, 'wall'):.3f} s wall, {median(key, 'cpu'):.3f} s CPU, "
              f"{median(key, 'peak_mb'):.0f} MB")
    header = f"{'command':<10} {'wall s':>7} {'CPU s':>7} {'peak MB':>8} {'wall/floor':>10} {'CPU/floor':>10}"
    if args.base:
        header += f" {'base wall':>9} {'base CPU':>9} {'wall/base':>9} {'CPU/base':>9}"
    print(header)
    for command in COMMANDS:
        this, floor = ("this", command), ("floor", floor_of(command))
        line = (f"{command:<10} {median(this, 'wall'):7.3f} {median(this, 'cpu'):7.3f} {median(this, 'peak_mb'):8.0f} "
                f"{median(this, 'wall') / median(floor, 'wall'):10.2f} {median(this, 'cpu') / median(floor, 'cpu'):10.2f}")
        if args.base:
            base = ("base", command)
            line += (f" {median(base, 'wall'):9.3f} {median(base, 'cpu'):9.3f} "
                     f"{median(this, 'wall') / median(base, 'wall'):9.2f} {median(this, 'cpu') / median(base, 'cpu'):9.2f}")
        print(line)
    print("floor of verify: + onnxruntime (its reference); of the others: numpy + onnx")


if __name__ == "__main__":
    main()
