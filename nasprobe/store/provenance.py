"""Which probe set measured each (run, epoch) of a store.

Each probe job records the sha256 of its probe set (and where it read it from) in the
attributes of its own group, ``runs/<run>/<job>`` (docs/store-design.md); each epoch's commit
marker names the job whose values the store shows for it. Together they give the probe set
of every (run, epoch). A run probed again with another probe set (``nasprobe probe --force``)
thus shows exactly which of its epochs were measured on which images; ``nasprobe info`` and
``nasprobe report`` say so in words (:func:`mixed_probe_sets`).

Job groups written before the job attribute existed recorded the hash in their provenance
JSON, which is read instead; older ones recorded none, and their epochs are taken to have used
the store's own probe set (the root's ``probe_sha256``).
"""

from __future__ import annotations

import json

__all__ = ["run_probe_sets", "mixed_probe_sets"]


def _job_probe(attrs: dict, root: dict) -> tuple[str, str]:
    """(sha256, source) of the probe set a job group's attributes record."""
    sha = attrs.get("probe_sha256")
    if not sha:
        try:
            sha = json.loads(attrs.get("provenance", "{}")).get("probe_sha256")
        except ValueError:
            sha = None
    return str(sha or root.get("probe_sha256", "")), str(attrs.get("probe_source", ""))


def run_probe_sets(job_attrs: dict[str, dict], job_epochs: dict[str, list[int]],
                   root: dict) -> list[dict]:
    """The probe sets of one run's committed epochs.

    Args:
        job_attrs: job → the attributes of its group.
        job_epochs: job → the epochs its commit markers name (the values the store shows).
        root: the store's root attributes (fallback hash for jobs that recorded none).

    Returns:
        One dict per probe set, in the order of their first epoch: ``sha256``, ``source`` (the
        path or URL a job read it from) and ``epochs`` (sorted). One entry when every epoch
        was measured on the same probe set.
    """
    sets: dict[str, dict] = {}
    for job in sorted(job_epochs):
        sha, source = _job_probe(job_attrs.get(job, {}), root)
        entry = sets.setdefault(sha, {"sha256": sha, "source": source, "epochs": []})
        entry["epochs"] = sorted({*entry["epochs"], *map(int, job_epochs[job])})
        entry["source"] = entry["source"] or source
    return sorted(sets.values(), key=lambda s: (s["epochs"][:1], s["sha256"]))


def _epochs(epochs: list[int]) -> str:
    return ("epoch " if len(epochs) == 1 else "epochs ") + ", ".join(map(str, epochs))


def mixed_probe_sets(run: str, sets: list[dict]) -> str | None:
    """A sentence saying that ``run``'s epochs were measured on different probe sets, naming
    which epochs used which (``sets`` from :func:`run_probe_sets`); None when they were not."""
    if len(sets) < 2:
        return None
    parts = [f"{_epochs(s['epochs'])} with probe set sha256 {s['sha256'][:12]}…"
             + (f" ({s['source']})" if s.get("source") else "") for s in sets]
    return (f"run {run!r} MIXES {len(sets)} probe sets: {'; '.join(parts)}. Its epochs were not "
            "all measured on the same images, so its time series is not one measurement.")
