"""The lowest versions pyproject.toml allows are past every known loader bypass of the
libraries that read untrusted checkpoints (advisories listed beside each floor)."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

#: package → (first release with every fix, the advisories it fixes)
FIXED_IN = {
    "torch": ("2.13.0", "GHSA-53q9-r3pm-6pq6 (CVE-2025-32434, weights_only bypass, < 2.6); "
                        "GHSA-63cw-57p8-fm3p (CVE-2026-24747, weights_only unpickler, < 2.10); "
                        "GHSA-rrmf-rvhw-rf47 (CVE-2025-3000, <= 2.12.1)"),
    "keras": ("3.15.1", "GHSA-48g7-3x6r-xfhp (CVE-2025-1550, < 3.9); GHSA-36fq-jgmw-4r9c and "
                        "GHSA-c9rc-mg46-23w3 (CVE-2025-9906/8747, < 3.11); CVE-2025-9905 (.h5 "
                        "ignores safe_mode, < 3.11.3); GHSA-4f3f-g24h-fr8m (CVE-2026-1462); "
                        "GHSA-hqp4-2352-xf5r (< 3.14.0); pickling fixes of 3.15.1"),
    "onnx": ("1.21.0", "GHSA-3r9x-f23j-gc73 (CVE-2026-27489, external data via symlink); "
                       "CVE-2026-34445 (ExternalDataInfo attribute injection); "
                       "GHSA-hqmj-h5c6-369m (CVE-2026-28500)"),
}


def _requirements() -> list[Requirement]:
    text = PYPROJECT.read_text()
    return [Requirement(s) for s in re.findall(r'"([A-Za-z0-9_.\-]+\s*[<>=!~][^"]*)"', text)]


def test_floors_are_past_known_loader_bypasses():
    reqs = _requirements()
    for name, (fixed, advisories) in FIXED_IN.items():
        found = [r for r in reqs if r.name.lower() == name]
        assert found, f"{name} is not declared in pyproject.toml"
        for req in found:
            floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
            assert floors and min(floors) >= Version(fixed), (
                f"{req}: allows versions before {fixed}, affected by {advisories}")
