"""Read requirements/lock.txt (``uv pip compile --generate-hashes`` output) for the tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
TORCH_PIN = REPO / "requirements" / "torch.txt"
DEV_INPUT = REPO / "requirements" / "dev.in"


@dataclass(frozen=True)
class LockedPackage:
    """One entry of the lock: ``name==version ; marker`` and its ``--hash`` options."""

    name: str
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies_here(self) -> bool:
        """Whether this entry's environment marker holds for the running interpreter."""
        return self.marker is None or self.marker.evaluate()


def read_lock(path: Path = LOCK) -> list[LockedPackage]:
    """Every entry of a hashed requirements file, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = re.split(r"\s+--", line)
        req = Requirement(spec)
        (pin,) = req.specifier
        assert pin.operator == "==", f"{line}: a lock pins exact versions"
        hashes = tuple(o.split("=", 1)[1] for o in options if o.startswith("hash="))
        entries.append(
            LockedPackage(canonicalize_name(req.name), Version(pin.version), req.marker, hashes)
        )
    return entries


def pinned(path: Path) -> dict[str, Version]:
    """The ``name==version`` lines of a plain requirements file (comments skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def torch_version() -> str:
    """The torch release of requirements/torch.txt, e.g. ``"2.13.0"``."""
    return str(pinned(TORCH_PIN)["torch"])


def locked_here() -> dict[str, Version]:
    """The lock's version of each package, for this interpreter's environment."""
    return {p.name: p.version for p in read_lock() if p.applies_here()}
