"""Reports: a store as one HTML file, or as TensorBoard event files.

Owns the HTML report (:mod:`.html`), the TensorBoard export (:mod:`.tensorboard`) and the event
file writer it uses (:mod:`.event_writer`, no TensorFlow).

May import: :mod:`nasprobe.plots`, :mod:`nasprobe.store`, :mod:`nasprobe.measures` and the base.
"""
