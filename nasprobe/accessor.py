"""The ``.nas`` accessor on stores: figures and onsets from a notebook.

>>> import nasprobe.accessor  # registers the accessor (nasprobe imports it too)
>>> dt = nasprobe.open_store("runs.zarr")
>>> dt.nas.lineplot(runs=["vanilla-s0"], layers="conv")          # a matplotlib Figure
>>> dt.nas.lineplot(groups={"vanilla": ["vanilla-s0", "vanilla-s1", "vanilla-s2"],
...                         "dropout": ["drop-s0", "drop-s1", "drop-s2"]})
>>> dt.nas.onsets()                                               # an xarray.Dataset

**Comparing runs.** Every figure groups runs into configurations; each group is drawn as one
curve (median over its runs) with a min-max band (line, entropy), or one panel (stripes,
heatmaps, corr; heatmaps average the maps of the group's runs). Groups come from ``groups=``
(``{name: [run, ...]}``), else from a coordinate ``config`` on the ``run`` dimension (e.g.
``ds.assign_coords(config=("run", ["vanilla", "vanilla", "dropout"]))``), else all selected
runs form one group. ``runs=`` (list or "A,B") and ``layers=`` (list or regular expression)
select first. Other keyword arguments go to :func:`nasprobe.plots.draw` (``width``, ``dpi``,
``max_cols``, ...).

Registering the accessor imports only xarray: matplotlib is imported when a figure is drawn,
scipy when onsets are computed.

The DataTree accessor draws heatmaps from the ``heatmaps/<layer>`` groups; the Dataset one
(the root dataset only) shows each layer's ``nas_mean`` as a single cell instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import xarray as xr

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, scipy when onsets are read
    from matplotlib.figure import Figure

__all__ = ["NasAccessor"]


class NasAccessor:
    """Figures (matplotlib Figures) and onsets of a nasprobe store: ``obj.nas.<method>``."""

    def __init__(self, obj: xr.Dataset | xr.DataTree):
        self._obj = obj

    @property
    def dataset(self) -> xr.Dataset:
        """The root dataset (dims run, epoch, layer, ...)."""
        obj = self._obj
        return obj.to_dataset() if isinstance(obj, xr.DataTree) else obj

    def _draw(self, kind: str, runs, layers, groups, kwargs) -> Figure:
        from nasprobe import plots

        return plots.draw(self._obj, kind, runs=runs, layers=layers, groups=groups, **kwargs)

    def lineplot(self, runs=None, layers=None, groups=None, **kwargs) -> Figure:
        """NAS Line Plot: median NAS per layer over epochs, loss in red (2021 Fig. 2b/3)."""
        return self._draw("line", runs, layers, groups, kwargs)

    def stripes(self, runs=None, layers=None, groups=None, **kwargs) -> Figure:
        """NAS Stripe Plot: one viridis stripe per layer over epochs (2021 Fig. 2c/5)."""
        return self._draw("stripes", runs, layers, groups, kwargs)

    def heatmaps(self, runs=None, layers=None, groups=None, **kwargs) -> Figure:
        """NAS Heatmaps: layers × epochs of mean NAS maps, loss above (2021 Fig. 4)."""
        return self._draw("heatmaps", runs, layers, groups, kwargs)

    def corr_hist(self, runs=None, layers=None, groups=None, **kwargs) -> Figure:
        """Weight-correlation histograms, epoch × correlation per layer (2020 Fig. 7)."""
        return self._draw("corr", runs, layers, groups, kwargs)

    def entropy(self, runs=None, layers=None, groups=None, **kwargs) -> Figure:
        """Mean receptive-field entropy (nats) per layer over epochs (2020 Fig. 5)."""
        return self._draw("entropy", runs, layers, groups, kwargs)

    def dead(self, runs=None, layers=None, groups=None, **kwargs) -> Figure:
        """Share of dead units (channels never above zero at the nonlinearity's input) per
        layer over epochs; one panel per group, or per run without groups."""
        return self._draw("dead", runs, layers, groups, kwargs)

    def hist(self, runs=None, layers=None, groups=None, epochs=None, **kwargs) -> Figure:
        """NAS distributions per layer: several runs (groups) overlaid at ``epochs`` (list or
        "10,20"; default the last), or for one run a ridgeline over epochs."""
        return self._draw("hist", runs, layers, groups, {"epochs": epochs, **kwargs})

    def onsets(self, runs=None, layers=None, sigma: float = 2.0) -> xr.Dataset:
        """Loss onset per run, NAS onset and lead time per (run, layer), in epochs.

        See :func:`nasprobe.measures.onsets.onsets`; ``runs``/``layers`` select as for the figures.
        """
        from nasprobe.measures.onsets import onsets
        from nasprobe.plots.select import select

        return onsets(select(self._obj, runs=runs, layers=layers).ds, sigma=sigma)


@xr.register_dataset_accessor("nas")
class NasDatasetAccessor(NasAccessor):
    """``ds.nas``: the accessor on a store's root dataset."""


@xr.register_datatree_accessor("nas")
class NasDataTreeAccessor(NasAccessor):
    """``dt.nas``: the accessor on a store (heatmaps from its ``heatmaps/<layer>`` groups)."""
