"""The measures: pure functions of arrays, and nothing else.

Owns NAS, entropy and perplexity (:mod:`.nas`), their streaming statistics (:mod:`.aggregate`)
and host kernels (:mod:`.kernels`, with the C extension ``ckernels``), onnxruntime's blocked
channel layout that they also read (:mod:`.nchwc`), filter weight
correlations (:mod:`.correlation`), overfitting onsets (:mod:`.onsets`), the label-free stopping
rules (:mod:`.stopping`) and the rule applied epoch by epoch while training
(:mod:`.online_stopper`).

May import: numpy, scipy and nasprobe's base modules (``errors``, ``cpus``). No I/O.
"""
