"""The probe job: checkpoints through tapped ONNX and onnxruntime into the store.

Owns the job itself (:mod:`.probe_job`), its runs' names and sources (:mod:`.runs`), its
options (:mod:`.options`), one (run, epoch) as a task (:mod:`.tasks`), one epoch's forward
passes and statistics (:mod:`.epoch`), Dask execution (:mod:`.parallel`), onnxruntime sessions
(:mod:`.runtime`) and the process's shared CPU arena (:mod:`.arena`), how a checkpoint's arrays
reach a session (:mod:`.weights`), tap outputs in onnxruntime's blocked layout
(:mod:`.blocked_taps`), the batch pipeline and CPU streams (:mod:`.pipeline`) and writing the
tapped ONNX files themselves (:mod:`.tapped_onnx`, ``nasprobe export``).

May import: every package below it (measures, probesets, onnxgraph, frameworks, store), never
plots, report or cli.
"""
