"""Compiled images, kept by the content hash of everything that determines them.

A sweep compiles once per distinct hardware point, and a second sweep over the same
model, data and hardware compiles nothing: the key of an image is the SHA-256 of the
model's and the calibration files' names and bytes (an image records the file names in its
provenance), the full hardware description, the compile options, the chip measurement a
defect-aware image maps around (as the key of the plain image and the seed, which
determine it) and cimc's version (a new compiler may compile differently). Compilation is deterministic (the same inputs give the same image
bytes, README "The programming image"), so a cached image is the image a compile would
give, and the cache never changes a result.

The cache lives on the machine that runs ``cimc sweep`` (the client): workers receive
image bytes from it and send compiled images back, so a cluster needs no shared file
system. Default folder: ``$CIMC_CACHE_DIR``, else ``$XDG_CACHE_HOME/cimc/images``, else
``~/.cache/cimc/images``; ``cimc sweep --cache DIR`` chooses another.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cimc import __version__
from cimc.diagnostics import CimcError


def default_cache_dir() -> Path:
    """Where images are kept unless ``--cache`` says otherwise (see the module docstring)."""
    if os.environ.get("CIMC_CACHE_DIR"):
        return Path(os.environ["CIMC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cimc" / "images"


@dataclass(frozen=True)
class CompileSpec:
    """What an image is compiled from, besides its hardware: the model, calibration data, compile options.

    ``calib`` holds files (a directory is expanded by the caller to its sorted .npz files, as
    ``cimc compile --calib DIR`` reads it), so that their bytes enter the key.
    """

    model: str
    calib: tuple[str, ...] = ()
    identity: str = "auto"
    pipeline: str | None = None

    def digest(self) -> dict[str, object]:
        """What determines the compile: file names and digests, not folders (a moved file is still cached)."""
        from cimc.npz import file_sha256  # here, not at the top: the parser (every command) reads default_cache_dir

        return {"model": [Path(self.model).name, file_sha256(self.model)],
                "calib": [[Path(c).name, file_sha256(c)] for c in self.calib],
                "identity": self.identity, "pipeline": self.pipeline}


def image_key(spec_digest: dict[str, object], hardware_toml: str, defects: tuple[str, int] | None = None) -> str:
    """The cache key of an image: SHA-256 of its compile inputs, as sorted JSON.

    ``defects``: (the plain image's key, chip seed) for a defect-aware image, whose measurement
    (``cimc.backends.tester.measure``) is a function of the plain image and the chip.
    """
    content = {"cimc_version": __version__, "compile": spec_digest, "hardware": hardware_toml,
               "defects": None if defects is None else {"plain_image_key": defects[0], "seed": defects[1]}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


class ImageCache:
    """A folder of ``<key>.cimg`` files, written atomically (a crashed sweep leaves no half image)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CimcError(f"cannot create the image cache {self.folder}: {e.strerror}") from None
        self.hits = 0
        self.stored = 0

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.cimg"

    def get(self, key: str) -> bytes | None:
        """The image's bytes, or None when it was never stored or no longer loads (then it is compiled again)."""
        from cimc.image import load_image

        path = self.path(key)
        try:
            data = path.read_bytes()
            load_image(path)  # every checksum: a damaged cache entry is a miss, not a wrong result
        except (OSError, CimcError):
            return None
        self.hits += 1
        return data

    def put(self, key: str, data: bytes) -> None:
        from cimc.npz import write_atomic

        write_atomic(self.path(key), data)
        self.stored += 1
