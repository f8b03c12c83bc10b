"""The store: where NAS lives on disk, written by jobs and read as xarray.

Owns paths and URLs (:mod:`.storage`), local copies of remote checkpoints and probe sets
(:mod:`.download_cache`), the on-disk names (:mod:`.layout`), the writer (:mod:`.writer`, the
job group's arrays :mod:`.job_group`), the plain reader (:mod:`.runs`, its typed records
:mod:`.records`) and the xarray view (:mod:`.reader`), which probe set measured what
(:mod:`.provenance`), the check that a job's layers fit (:mod:`.layer_check`), migrating 0.1
stores (:mod:`.migrate`) and imported training logs (:mod:`.training_logs`).

May import: zarr, xarray, fsspec, the base modules and :mod:`nasprobe.measures` (bin edges).
"""
