"""Writing the NAS store: one group per (run, probe job), an atomic commit marker per epoch.

The layout and why it needs no locks are in docs/store-design.md; the combined view users
read is :func:`open_store` (docs/store.md). In short:

* :meth:`Store.create_or_check` creates the root once (identical bytes from every job) or
  checks that the store was written with the same probe set and tap mode;
* :meth:`Store.open_run` creates this job's own group for one run, sized for the epochs it
  will probe, and claims those epochs (a hint that lets two jobs on one run split them);
* :meth:`RunWriter.write_epoch` (picklable, used by Dask workers too) writes one epoch's
  chunks — one call per epoch, nothing shared is touched — and then creates the epoch's commit
  marker exclusively. Of two jobs that probed the same epoch exactly one commits; the other's
  chunks stay invisible. In a group chunked several epochs per chunk (a serial job) the rows
  are held for up to :data:`HOLD_SECONDS` of work, so that short epochs share their chunks,
  and :meth:`RunWriter.flush` writes and commits what is held.

Nothing is resized, consolidated or read-modified-written after a job starts, so the cost of
a commit is that of writing its own chunks (one object per array) and one marker.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from nasprobe.errors import StoreError
from nasprobe.measures.aggregate import NAS_BINS, QUANTILES
from nasprobe.measures.correlation import CORR_BINS

from .chunks import EpochBlocks, RowCodec, encode_rows, row_codecs, whole_array
from .job_group import build_job_group
from .layer_check import fix_run_shapes
from .layout import (
    CLAIMS,
    COMMITS,
    LAYOUT,
    RUNS,
    SCALARS,
    LayerInfo,
    check_metric_name,
    group_json,
    group_name,
    marker,
    read_marker,
    run_key,
)
from .limits import json_object
from .run_sources import claim_run
from .runs import committed_epochs, store_layout
from .storage import Location, location, warn_if_not_exclusive

__all__ = ["Store", "RunWriter", "new_job_id", "HOLD_SECONDS", "EPOCHS_PER_CHUNK"]

#: The longest a serial job holds probed epochs before writing and committing them (seconds of
#: work since its last commit): what a job killed outright (SIGKILL, power loss) may lose. A
#: job that stops with an error or Ctrl-C writes what it holds first.
HOLD_SECONDS = 1.0
#: Epochs per chunk of the groups of serial jobs (see docs/store-design.md).
EPOCHS_PER_CHUNK = 16


def new_job_id() -> str:
    """A probe job's id: sortable by start time, unique across machines."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


#: Per process: (store, run, job) → how that job group stores its rows (job_group.row_codecs).
_CODECS: dict[tuple, dict] = {}


class Store:
    """Writer for one store (a local path or an fsspec URL). Picklable (holds only the path)."""

    def __init__(self, path: str | os.PathLike | Location):
        self.loc = path if isinstance(path, Location) else location(path)

    def __getstate__(self):
        return {"loc": self.loc}

    def __setstate__(self, state):
        self.loc = state["loc"]

    @property
    def path(self) -> str:
        """The store as given (absolute for local paths)."""
        return self.loc.url

    def _attrs(self) -> dict:
        """The attributes of the store's root group."""
        try:
            return json_object(self.loc.read("zarr.json")).get("attributes", {})
        except OSError as exc:
            raise StoreError(self.path, f"cannot be opened: {exc}") from exc

    def exists(self) -> bool:
        """True when a store (any layout) is at the path."""
        return self.loc.exists("zarr.json")

    def create_or_check(self, attrs: dict, force: bool = False) -> None:
        """Create the store, or check that an existing one was written with the same probe set,
        tap mode and bias setting (``force`` allows another probe set)."""
        warn_if_not_exclusive(self.loc)
        if self.exists():
            layout = store_layout(self.loc)
            if layout != LAYOUT:
                raise StoreError(self.path, "was written by nasprobe 0.1 (one shared dataset); "
                                 "new runs cannot be added to it. Copy it into the current "
                                 "layout with: nasprobe migrate "
                                 f"{self.path} --out NEW_STORE")
            old = self._attrs()
            for key in ("tap", "exclude_bias"):
                if key in old and old[key] != attrs[key]:
                    raise StoreError(self.path, f"was written with {key}={old[key]!r}, this run "
                                     f"uses {attrs[key]!r}; use another --out")
            if old.get("probe_sha256") != attrs["probe_sha256"] and not force:
                raise StoreError(self.path, "was written with another probe set (sha256 "
                                 f"{str(old.get('probe_sha256'))[:12]}…, this one "
                                 f"{attrs['probe_sha256'][:12]}…); results would not be "
                                 "comparable; use another --out or --force")
            return
        if self.loc.local:
            try:
                self.loc.path().mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(self.path, f"cannot be created: {exc}") from exc
        # Jobs may create the store at the same moment: the coordinates and the runs group
        # come first (identical bytes from every job), the root's zarr.json last and
        # exclusively, so a store that exists is complete and has one set of attributes.
        files: dict[str, bytes] = {}
        for name, values in (("quantile", np.array(QUANTILES)),
                             ("nas_bin", (NAS_BINS[:-1] + NAS_BINS[1:]) / 2),
                             ("corr_bin", (CORR_BINS[:-1] + CORR_BINS[1:]) / 2)):
            files.update(whole_array(name, values, (name,), np.nan))
        self.loc.put_many(files)  # the same bytes from every job
        self.loc.create(group_json({}), RUNS, "zarr.json")
        shared = {k: attrs[k] for k in ("tap", "exclude_bias", "probe_sha256", "probe_size")}
        if not self.loc.create(group_json({"nasprobe_layout": LAYOUT, **shared}), "zarr.json"):
            self.create_or_check(attrs, force)  # another job created it first: check it

    def open_run(self, run: str, epochs: list[int], layers: list[LayerInfo], keep_images: int,
                 provenance: dict, job: str | None = None, attrs: dict | None = None,
                 source: str | None = None, named: bool = False,
                 epochs_per_chunk: int = 1) -> RunWriter:
        """Create this job's group for ``run`` (arrays sized for ``epochs``,
        ``epochs_per_chunk`` epochs per chunk: 1 when several processes write the job's
        epochs, :data:`EPOCHS_PER_CHUNK` for a job that writes them itself, one after another)
        and claim the epochs not yet committed. ``source`` (the run's checkpoint
        folder) is recorded with a new run and checked against an existing one's unless the
        run was ``named`` explicitly (:func:`nasprobe.run_sources.claim_run`).

        Returns:
            A :class:`RunWriter` whose ``todo`` lists the epochs to probe: first those this
            job claimed, then those another job had claimed (probed only if still uncommitted
            when their turn comes, so a killed job's claims never block a run).
        """
        job = job or new_job_id()
        key = run_key(run)
        if set(map(int, epochs)) <= set(committed_epochs(self.loc, key)):
            # Nothing to do (a finished run probed again): the store is left untouched.
            return RunWriter(self.loc, run, job, {int(e): i for i, e in enumerate(epochs)},
                             [x.name for x in layers], todo=[], done=set(map(int, epochs)))
        claim_run(self.loc, run, source, named)
        fix_run_shapes(self.loc, run, layers, job)
        for sub in (COMMITS, CLAIMS):
            self.loc.create(group_json({}), RUNS, key, sub, "zarr.json")
        # The group is built in memory and uploaded in one batch (concurrent requests on object
        # stores); its metadata documents travel with the writer, so that a process writing an
        # epoch (a Dask worker) needs no read to know the arrays.
        files = build_job_group(epochs, layers, keep_images,
                                {"run": run, "job": job, "keep_images": int(keep_images),
                                 "provenance": json.dumps(provenance),
                                 "layers": json.dumps([x.name for x in layers]), **(attrs or {})},
                                epochs_per_chunk)
        self.loc.put_many({f"{RUNS}/{key}/{job}/{k}": v for k, v in files.items()})
        writer = RunWriter(self.loc, run, job, {int(e): i for i, e in enumerate(epochs)},
                           [x.name for x in layers],
                           meta={k: v for k, v in files.items() if k.endswith("zarr.json")})
        writer.claim()
        return writer

    def write_metrics(self, run: str, metrics: dict[str, dict[int, float]]) -> int:
        """Store imported per-epoch metrics (name → {epoch: value}) of ``run`` in a group of
        their own (later imports win on read); returns how many values were stored for epochs
        the run has committed."""
        if store_layout(self.loc) != LAYOUT:
            raise StoreError(self.path, "is not a nasprobe store of the current layout "
                             "(see nasprobe migrate)")
        for name in metrics:
            check_metric_name(self.path, name)
        key = run_key(run)
        done = committed_epochs(self.loc, key)
        if not done:
            raise StoreError(self.path, f"has no probed epoch of run {run!r}")
        epochs = sorted({int(e) for values in metrics.values() for e in values})
        files = {"zarr.json": group_json({"run": run, "metrics": True})}
        files.update(whole_array("epoch", np.asarray(epochs, np.int64), ("epoch",), -(2**62)))
        for name, values in metrics.items():
            col = np.array([values.get(e, np.nan) for e in epochs], np.float64)
            files.update(whole_array(name, col, ("epoch",), np.nan))
        # the group's own document last: a reader never sees a group without its arrays
        group = f"{RUNS}/{key}/metrics-{new_job_id()}"
        self.loc.put_many({f"{group}/{k}": v for k, v in files.items() if k != "zarr.json"})
        self.loc.put_many({f"{group}/zarr.json": files["zarr.json"]})
        return sum(1 for values in metrics.values() for e in values if int(e) in done)


@dataclass
class RunWriter:
    """Writes one job's epochs of one run. Picklable: Dask workers get it with their task.

    ``index`` maps epoch → slot in this job's group; ``layers`` are the group's layer names;
    ``todo`` (set by :meth:`claim`) the epochs to probe, in order, and ``done`` those another
    job (or an earlier one) had already committed.
    """

    loc: Location
    run: str
    job: str
    index: dict[int, int]
    layers: list[str]
    meta: dict[str, bytes] = field(default_factory=dict, repr=False)
    todo: list[int] | None = None
    done: set[int] | None = None
    #: rows held for chunks of several epochs, the epochs they belong to (uncommitted), and
    #: when this writer last committed (time.monotonic)
    held: EpochBlocks | None = field(default=None, repr=False)
    waiting: list[int] = field(default_factory=list, repr=False)
    last_commit: float = field(default_factory=time.monotonic, repr=False)

    @property
    def key(self) -> str:
        """The run's group name."""
        return run_key(self.run)

    def _group(self) -> Location:
        return self.loc.child(RUNS, self.key, self.job)

    def claim(self) -> None:
        """Sort this job's epochs into ``done`` (committed), own claims, others' claims."""
        self.done = set(committed_epochs(self.loc, self.key)) & set(self.index)
        todo = [e for e in self.index if e not in self.done]
        with ThreadPoolExecutor(8) as pool:  # object stores: one request per claim, at once
            got = list(pool.map(lambda e: self.loc.create(marker(self.job, self.index[e], e), RUNS,
                                                          self.key, CLAIMS, str(e), "zarr.json"),
                                todo))
        self.todo = [e for e, ok in zip(todo, got) if ok] + [e for e, ok in zip(todo, got) if not ok]

    def committed_by(self, epoch: int) -> str | None:
        """The job whose values of ``epoch`` are committed, or None."""
        m = read_marker(self.loc.read(RUNS, self.key, COMMITS, str(int(epoch)), "zarr.json"))
        return None if m is None else m["job"]

    def write_epoch(self, epoch: int, summaries: dict[str, dict],
                    metrics: dict[str, float] | None = None,
                    corr: dict[str, np.ndarray] | None = None) -> bool | None:
        """Write one epoch's results into this job's chunks, then commit them.

        In a group whose arrays are chunked several epochs per chunk, their rows are held
        instead (only arrays with a chunk per epoch are written) and the epoch is not committed
        while the chunks it belongs to still miss epochs of this job and less than
        :data:`HOLD_SECONDS` passed since this writer last committed; :meth:`flush` writes the
        held chunks and commits their epochs, as does the next call that finds the chunks
        complete or the time passed.

        Args:
            epoch: the epoch (its slot in this job's group is ``index[epoch]``).
            summaries: layer → :meth:`nasprobe.measures.aggregate.LayerStats.summary` dict.
            metrics: ``loss``/``accuracy`` for this epoch (others are ignored here).
            corr: layer → ``corr_hist`` counts (200,).

        Returns:
            True when this job's values are the committed ones; False when another job had
            committed the epoch first (its values stay, these are never seen); None while
            the epoch is held.
        """
        if self.done and int(epoch) in self.done:  # committed before this job started
            return self.committed_by(epoch) == self.job
        i = self.index[int(epoch)]
        codecs = self._codecs()
        rows = self._rows(codecs, summaries, metrics, corr)
        now = {k: v for k, v in rows.items() if codecs[k].epochs == 1}
        chunks = encode_rows(codecs, i, now)
        if len(now) < len(rows):
            if self.held is None:
                expected = {self.index[e] for e in (self.todo or self.index)}
                self.held = EpochBlocks({k: c for k, c in codecs.items() if c.epochs > 1},
                                        expected)
            self.held.add(i, {k: v for k, v in rows.items() if codecs[k].epochs > 1})
        # The epoch's chunks are encoded in memory: upload them in one batch, then commit.
        self.loc.put_many({f"{RUNS}/{self.key}/{self.job}/{k}": v for k, v in chunks.items()})
        if self.held is None:
            return self.commit(epoch)
        self.waiting.append(int(epoch))
        if self.held.full() or time.monotonic() - self.last_commit >= HOLD_SECONDS:
            return self.flush()[int(epoch)]
        return None

    def flush(self) -> dict[int, bool]:
        """Write the chunks of the held epochs, then commit those epochs (in the order they
        were written). Returns epoch → :meth:`commit`'s answer; nothing when none is held."""
        if self.held is not None and self.held.pending():
            chunks = self.held.take()
            self.loc.put_many({f"{RUNS}/{self.key}/{self.job}/{k}": v for k, v in chunks.items()})
        got = {e: self.commit(e) for e in self.waiting}
        self.waiting = []
        self.last_commit = time.monotonic()
        return got

    def _rows(self, codecs: dict[str, RowCodec], summaries: dict[str, dict],
              metrics: dict[str, float] | None,
              corr: dict[str, np.ndarray] | None) -> dict[str, tuple]:
        """One epoch's rows: array path → ``(columns or None for the whole row, values)``
        (see :func:`nasprobe.store.chunks.encode_rows`); ``codecs``: :meth:`_codecs`."""
        idx = [self.layers.index(layer) for layer in summaries]
        full = len(idx) == len(self.layers) and idx == sorted(idx)
        rows: dict[str, tuple] = {}  # array path → (columns or None for the whole row, values)

        def put(name, values, cols=idx):
            rows[name] = (None if full and cols is idx else cols, values)

        for name in SCALARS:
            put(name, np.array([summaries[layer][name] for layer in summaries], np.float64))
        if "dead_fraction" in codecs:
            put("dead_fraction", np.array([summaries[layer].get("dead_fraction", np.nan)
                                           for layer in summaries], np.float64))
        put("nas_quantile", np.stack([s["nas_quantile"] for s in summaries.values()]))
        put("nas_hist", np.stack([s["nas_hist"] for s in summaries.values()]))
        if corr:
            put("corr_hist", np.stack(list(corr.values())),
                [self.layers.index(layer) for layer in corr])
        for layer, s in summaries.items():
            heat = f"heatmaps/{group_name(layer)}"
            rows[f"{heat}/nas_map"] = (None, s["nas_map"])
            img = s["nas_image_map"][: codecs[f"{heat}/nas_image_map"].row[0]]
            if len(img):
                rows[f"{heat}/nas_image_map"] = (slice(0, len(img)), img)
            if "unit_activity" in s:
                rows[f"{heat}/unit_activity"] = (None, s["unit_activity"])
        for name in ("loss", "accuracy"):
            if metrics and name in metrics:
                rows[name] = (None, metrics[name])
        return rows

    def _codecs(self) -> dict[str, RowCodec]:
        """How this job group's per-epoch rows are stored (:func:`row_codecs`), by array path;
        worked out once per job and process."""
        k = (self.loc.url, self.key, self.job)
        if k not in _CODECS:
            if len(_CODECS) > 16:
                _CODECS.clear()
            _CODECS[k] = row_codecs(self.meta or self._read_meta())
        return _CODECS[k]

    def _read_meta(self) -> dict[str, bytes]:
        """The job group's metadata documents, read from the store (writers made before the
        metadata travelled with them)."""
        names = ["zarr.json"] + [f"{a}/zarr.json" for a in ("epoch", "layer", "layer_kind",
                                 "nonlinearity", "channels", "locations", "depth", "loss",
                                 "accuracy", "nas_quantile", "nas_hist", "corr_hist",
                                 "dead_fraction", *SCALARS)]
        names += ["heatmaps/zarr.json"]
        for layer in self.layers:
            g = f"heatmaps/{group_name(layer)}"
            names += [f"{g}/zarr.json"] + [f"{g}/{a}/zarr.json" for a in
                                           ("nas_map", "nas_image_map", "unit_activity")]
        got = self.loc.read_many([f"{RUNS}/{self.key}/{self.job}/{n}" for n in names])
        return {n: got[f"{RUNS}/{self.key}/{self.job}/{n}"] for n in names
                if got[f"{RUNS}/{self.key}/{self.job}/{n}"] is not None}

    def commit(self, epoch: int) -> bool:
        """Create the epoch's commit marker (atomic, exclusive); True when it names this job
        (also when this job had committed it before, e.g. a Dask task run twice)."""
        e = int(epoch)
        if self.loc.create(marker(self.job, self.index[e], e), RUNS, self.key, COMMITS, str(e),
                           "zarr.json"):
            return True
        for _ in range(50):  # a local marker is visible whole; this only guards odd backends
            holder = self.committed_by(e)
            if holder is not None:
                return holder == self.job
            time.sleep(0.01)
        return False

    def set_provenance(self, provenance: dict) -> None:
        """Replace this job's record of the run's provenance (skipped files, ...). Only this
        job writes its group, so nothing another job wrote is touched; a job that had nothing
        to do made no group and records nothing."""
        if not self.loc.exists(RUNS, self.key, self.job, "zarr.json"):
            return
        doc = json_object(self.loc.read(RUNS, self.key, self.job, "zarr.json"))
        doc.setdefault("attributes", {})["provenance"] = json.dumps(provenance)
        self.loc.write(json.dumps(doc).encode(), RUNS, self.key, self.job, "zarr.json")
