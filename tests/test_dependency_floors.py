"""The lowest versions pyproject.toml allows are past every published loader bypass of the
libraries that read untrusted checkpoints.

Each advisory below was looked up in a public source (the GitHub advisory database, the
project's own pull requests and release notes, or downstream projects' security bumps citing
them); ``first_fixed`` is the first release from which every later release is fixed.
"""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

#: package → [(advisory IDs, what it allows, first fixed release)]
ADVISORIES = {
    "torch": [
        ("CVE-2025-32434 / GHSA-53q9-r3pm-6pq6", "torch.load(weights_only=True) runs code", "2.6.0"),
        ("CVE-2026-24747 / GHSA-63cw-57p8-fm3p", "weights_only unpickler memory corruption",
         "2.10.0"),
        ("CVE-2025-3000 / GHSA-rrmf-rvhw-rf47", "torch.jit.script memory corruption", "2.13.0"),
    ],
    "keras": [
        ("CVE-2025-1550 / GHSA-48g7-3x6r-xfhp", "safe_mode bypass via config.json modules",
         "3.9.0"),
        ("CVE-2025-8747 / GHSA-c9rc-mg46-23w3", "safe_mode bypass", "3.11.0"),
        ("CVE-2025-9906, GHSA-36fq-jgmw-4r9c", "safe mode switched off from config.json",
         "3.11.0"),
        ("CVE-2025-9905", ".h5 files ignore safe_mode", "3.11.3"),
        ("CVE-2025-12060", "path traversal", "3.12.0"),
        ("CVE-2026-0897 / GHSA-xfhx-r7ww-5995", "HDF5 weight loading resource exhaustion",
         "3.13.2"),
        ("CVE-2026-1462 / GHSA-4f3f-g24h-fr8m", "safe_mode bypass via TFSMLayer (3.13.x "
         "affected after the 3.12.1 fix)", "3.14.0"),
        ("GHSA-hqp4-2352-xf5r", "path traversal during archive extraction", "3.14.0"),
    ],
    "onnx": [
        ("CVE-2024-27318 / GHSA-whh8-fjgc-qp73", "external data directory traversal", "1.16.0"),
        ("CVE-2026-27489 / GHSA-3r9x-f23j-gc73", "external data through a symbolic link",
         "1.21.0"),
        ("CVE-2026-34446, CVE-2026-34447", "external data hard links / canonical paths",
         "1.21.0"),
        ("CVE-2026-34445", "ExternalDataInfo attribute injection", "1.21.0"),
        ("CVE-2026-28500", "onnx.hub trust check bypass", "1.21.0"),
    ],
}


def _requirements() -> list[Requirement]:
    text = PYPROJECT.read_text()
    return [Requirement(s) for s in re.findall(r'"([A-Za-z0-9_.\-]+\s*[<>=!~][^"]*)"', text)]


def test_floors_are_past_known_loader_bypasses():
    reqs = _requirements()
    for name, advisories in ADVISORIES.items():
        found = [r for r in reqs if r.name.lower() == name]
        assert found, f"{name} is not declared in pyproject.toml"
        for req in found:
            floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
            assert floors, f"{req}: no lower bound"
            for ids, what, fixed in advisories:
                assert min(floors) >= Version(fixed), (
                    f"{req}: allows versions before {fixed}, affected by {ids} ({what})")


def test_each_advisory_is_named_beside_its_floor():
    """pyproject.toml's comments name every advisory listed here, so that a reader of the
    floors sees why they are where they are."""
    text = PYPROJECT.read_text()
    for advisories in ADVISORIES.values():
        for ids, _, _ in advisories:
            for one in re.findall(r"(?:CVE|GHSA)-[\w-]+", ids):
                assert one in text, f"{one} is not named in pyproject.toml"
