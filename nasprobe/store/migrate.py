"""``nasprobe migrate``: copy a store of nasprobe 0.1 into the current layout.

A 0.1 store (one dataset shared by all runs, a ``probed`` flag) opens with
:func:`nasprobe.open_store` as it is, but new runs cannot be added to it safely. Migrating
copies its committed values — nothing is recomputed — into a new store of the layout of
docs/store-design.md, one job group per run, so that later probe jobs can extend it.
"""

from __future__ import annotations

import json
import os

import numpy as np

from nasprobe.errors import StoreError

from .layout import SCALARS, LayerInfo
from .reader import open_store
from .runs import LEGACY, store_layout
from .storage import location
from .writer import Store

__all__ = ["migrate"]


def migrate(old: str | os.PathLike, new: str | os.PathLike) -> list[str]:
    """Copy the 0.1 store ``old`` into a new store ``new`` (which must not exist).

    Returns:
        The runs copied, in their order.

    Raises:
        StoreError: ``old`` is not a 0.1 store, or ``new`` exists already.
    """
    src, dst = location(old), Store(new)
    if store_layout(src) != LEGACY:
        raise StoreError(src.url, "is not a store of nasprobe 0.1 (nothing to migrate)")
    if dst.exists():
        raise StoreError(dst.path, "exists already; migrate into a new store")
    tree = open_store(src.url)
    ds = tree.to_dataset(inherit=False)
    attrs = dict(ds.attrs)
    dst.create_or_check({k: attrs[k] for k in ("tap", "exclude_bias", "probe_sha256", "probe_size")})
    runs = json.loads(attrs.get("runs", "{}"))
    maps = {str(node.attrs.get("layer", node.name)): node.to_dataset()
            for node in tree["heatmaps"].children.values()}
    extra = [v for v in ds.data_vars if set(ds[v].dims) == {"run", "epoch"}
             and v not in ("loss", "accuracy", "probed")]
    for run in ds["run"].values.tolist():
        r = ds.sel(run=run)
        epochs = [int(e) for e in r["epoch"].values[r["probed"].values.astype(bool)]]
        if not epochs:
            continue
        have = ~np.isnan(r["nas_median"].sel(epoch=epochs).values).all(axis=0)
        layers = [LayerInfo(str(name), str(r["layer_kind"].values[i]), int(r["channels"].values[i]),
                            tuple(maps[str(name)]["nas_map"].shape[2:]), int(r["depth"].values[i]))
                  for i, name in enumerate(r["layer"].values.tolist()) if have[i]]
        writer = dst.open_run(str(run), epochs, layers, int(attrs.get("keep_images", 0)),
                              runs.get(str(run), {}),
                              attrs={"nasprobe_version": attrs.get("nasprobe_version", "0.1.0"),
                                     "probe_source": attrs.get("probe_source", ""),
                                     "probe_sha256": attrs.get("probe_sha256", ""),
                                     "migrated_from": src.url})
        for epoch in epochs:
            c = r.sel(epoch=epoch)
            summaries = {}
            for x in layers:
                lc = c.sel(layer=x.name)
                s = {name: float(lc[name]) for name in SCALARS}
                s["nas_quantile"] = lc["nas_quantile"].values
                s["nas_hist"] = np.nan_to_num(lc["nas_hist"].values).astype(np.int64)
                m = maps[x.name].sel(run=run, epoch=epoch)
                s["nas_map"] = m["nas_map"].values
                s["nas_image_map"] = m["nas_image_map"].values
                summaries[x.name] = s
            corr = {x.name: np.nan_to_num(c["corr_hist"].sel(layer=x.name).values).astype(np.int64)
                    for x in layers}
            metrics = {k: float(c[k]) for k in ("loss", "accuracy") if k in c}
            writer.write_epoch(epoch, summaries, metrics, corr)
        values = {k: {e: float(r[k].sel(epoch=e)) for e in epochs
                      if np.isfinite(r[k].sel(epoch=e))} for k in extra}
        if any(values.values()):
            dst.write_metrics(str(run), {k: v for k, v in values.items() if v})
    return [str(r) for r in ds["run"].values.tolist()]
