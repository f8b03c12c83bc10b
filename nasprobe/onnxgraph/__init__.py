"""ONNX graphs: finding the taps and building the graph that exposes them.

Owns the graph index (:mod:`.index`), tap finding (:mod:`.taps`), readable layer names
(:mod:`.layer_names`), the NAS subgraph appended per tap (:mod:`.nas_graph`), making third-party
files probe-ready (:mod:`.prepare`), guarding onnx's native preparation steps against hostile
graphs (:mod:`.guard`: local functions counted before inlining, steps rehearsed in a child
process) and external data confined to a model's folder (:mod:`.external_data`).

May import: onnx, numpy and nasprobe's base modules (``contract``, ``errors``).
"""
