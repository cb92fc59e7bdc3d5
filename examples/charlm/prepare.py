"""Build the character-level corpus of the language-model example.

Corpus: Jane Austen's six completed novels (public-domain Project Gutenberg
texts) as shipped by the Debian package ``r-cran-janeaustenr`` (janeaustenr
1.0.0 by Julia Silge, MIT licence; the novels themselves are in the public
domain).  Debian is one of the few sources this machine can reach, and this
package is the only one found that ships whole public-domain novels as text.

The package stores the novels in R's lazy-load database (``data/Rdata.rdb`` with
index ``Rdata.rdx``), one character vector of text lines per novel.  Rather than
install R, this script downloads the .deb with ``apt-get download`` (no root
needed, no dependencies pulled in), unpacks it with ``dpkg-deb -x`` and decodes
the few R serialization types that occur with a small reader below.

Processing: lines are re-joined into paragraphs (the Gutenberg hard wrap at
~70 columns is an artefact of the e-text, not of the language), novels are
concatenated in publication order, and the text is cut into contiguous
50,000-character blocks of which every 20th goes to validation and the next
to test (so both sample all six novels).  The vocabulary is every character
that occurs at least ``--min-count`` times in the training split, in
code-point order, after the unknown symbol at id 0 to which everything else
maps.

Writes ``train.npy``/``val.npy``/``test.npy`` (uint8 ids) and ``corpus.txt`` to
--out (default data/charlm), and the checked-in ``vocab.txt`` and
``eval_set.npz`` (see :func:`write_eval_set`) next to this script.
``vocab.txt`` has one JSON string literal per line (line i = token i), so that
newline and space are unambiguous.

Run from the repository root:  python examples/charlm/prepare.py
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PACKAGE = "r-cran-janeaustenr"
RDB_IN_PACKAGE = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
NOVELS = [  # publication order
    "sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion",
]
UNK = "\ufffd"
BLOCK_CHARS = 50_000
BLOCK_CYCLE = 20  # block i: i % 20 == 18 -> val, == 19 -> test, else train
EVAL_T, EVAL_B = 128, 16


class RReader:
    """Decoder for the subset of R's XDR serialization format (version 2/3) found
    in janeaustenr's lazy-load database: lists, character/integer/logical
    vectors, attribute pairlists and symbols.  Any other type is an error, so a
    changed package cannot be silently misread.
    """

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError("not an XDR-format R serialization")
        self.data, self.pos, self.refs = data, 2, []
        version = self.int()
        self.pos += 8  # writer version, minimal reader version
        if version == 3:
            self.pos += 4 + self.int()  # native encoding name

    def int(self) -> int:
        """One big-endian signed 32-bit integer."""
        value = int.from_bytes(self.data[self.pos : self.pos + 4], "big", signed=True)
        self.pos += 4
        return value

    def read(self) -> object:
        """The next object: vectors as Python lists, named lists as dicts, other attributes dropped."""
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == 254:  # NILVALUE_SXP
            return None
        if kind == 255:  # REFSXP: back-reference to an earlier symbol
            return self.refs[(flags >> 8) - 1]
        if kind == 1:  # SYMSXP
            name = self.read()
            self.refs.append(name)
            return name
        if kind == 9:  # CHARSXP; bit 15 is the UTF-8 flag, otherwise latin-1 or ASCII
            n = self.int()
            if n == -1:
                return None
            text = self.data[self.pos : self.pos + n].decode("utf-8" if flags & (1 << 15) else "latin-1")
            self.pos += n
            return text
        if kind == 2:  # LISTSXP (pairlist): [attributes], [tag], head, tail -> list of (tag, value)
            if has_attr:
                self.read()
            tag = self.read() if has_tag else None
            head = self.read()
            tail = self.read()
            return [(tag, head)] + (tail or [])
        if kind in (10, 13):  # LGLSXP, INTSXP
            n = self.int()
            value: object = [self.int() for _ in range(n)]
        elif kind in (16, 19):  # STRSXP, VECSXP
            n = self.int()
            value = [self.read() for _ in range(n)]
        else:
            raise ValueError(f"unsupported R type {kind}")
        if has_attr:
            names = dict(self.read()).get("names")
            if kind == 19 and names is not None:
                return dict(zip(names, value, strict=True))
        return value


def fetch_rdb(cache: Path) -> Path:
    """Path of Rdata.rdb: the installed package if present, else an unpacked .deb in ``cache``."""
    installed = Path("/") / RDB_IN_PACKAGE
    if installed.exists():
        return installed
    unpacked = cache / "deb" / RDB_IN_PACKAGE
    if not unpacked.exists():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True)
            except (OSError, subprocess.CalledProcessError) as err:
                sys.exit(f"could not fetch {PACKAGE} ({err}); on Debian run 'apt-get update' first")
            deb = next(Path(tmp).glob(f"{PACKAGE}_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "deb")], check=True)
    return unpacked


def read_novels(rdb: Path) -> dict[str, list[str]]:
    """Each novel's text lines from the lazy-load database and its .rdx index."""
    index = RReader(gzip.decompress(rdb.with_suffix(".rdx").read_bytes())).read()
    assert isinstance(index, dict)
    blob = rdb.read_bytes()
    novels = {}
    for name, (offset, length) in index["variables"].items():
        record = blob[offset : offset + length]  # 4-byte length, then a zlib stream
        novels[name] = RReader(zlib.decompress(record[4:])).read()
    return novels


def paragraphs(lines: list[str]) -> str:
    """Undo the e-text's hard line wrap: one paragraph per line, blank lines dropped."""
    out, current = [], []
    for line in lines + [""]:
        line = (line or "").strip()
        if line:
            current.append(line)
        elif current:
            out.append(" ".join(current))
            current = []
    return "\n".join(out) + "\n"


def split_blocks(text: str) -> dict[str, str]:
    """Contiguous 50k-character blocks dealt to train/val/test in a fixed cycle."""
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i in range(0, len(text), BLOCK_CHARS):
        slot = (i // BLOCK_CHARS) % BLOCK_CYCLE
        name = "val" if slot == BLOCK_CYCLE - 2 else "test" if slot == BLOCK_CYCLE - 1 else "train"
        parts[name].append(text[i : i + BLOCK_CHARS])
    return {k: "".join(v) for k, v in parts.items()}


def write_eval_set(test: np.ndarray) -> None:
    """Checked-in evaluation set: 16 windows of 129 test characters spread evenly
    over the test split, as inputs x = window[:-1] and next-character targets
    y = window[1:], both int64 [128, 16] (time-major like the model).  Each
    column is meant to be run from a zero initial state.
    """
    starts = np.linspace(0, len(test) - EVAL_T - 1, EVAL_B).astype(np.int64)
    windows = np.stack([test[s : s + EVAL_T + 1] for s in starts], axis=1).astype(np.int64)
    np.savez_compressed(HERE / "eval_set.npz", ids=windows[:-1], y=windows[1:])  # keyed by the model input name


def main() -> None:
    """Fetch, clean, split and encode the corpus; write the vocabulary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/charlm"))
    parser.add_argument("--min-count", type=int, default=20, help="rarer training characters map to the unknown symbol")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rdb = fetch_rdb(args.out)
    novels = read_novels(rdb)
    text = "".join(paragraphs(novels[name]) for name in NOVELS)
    (args.out / "corpus.txt").write_text(text, encoding="utf-8")
    splits = split_blocks(text)

    counts = Counter(splits["train"])
    vocab = [UNK] + sorted(c for c, n in counts.items() if n >= args.min_count)
    ids = {c: i for i, c in enumerate(vocab)}
    (HERE / "vocab.txt").write_text("".join(json.dumps(c) + "\n" for c in vocab), encoding="utf-8")
    for name, part in splits.items():
        encoded = np.fromiter((ids.get(c, 0) for c in part), dtype=np.uint8, count=len(part))
        np.save(args.out / f"{name}.npy", encoded)
        print(f"{name}: {len(part)} chars, {np.mean(encoded == 0):.2e} unknown")
        if name == "test":
            write_eval_set(encoded)
    rare = {c: n for c, n in counts.items() if c not in ids}
    print(f"corpus {len(text)} chars, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}")
    print(f"vocabulary {len(vocab)} symbols; mapped to unknown: {rare}")


if __name__ == "__main__":
    main()
