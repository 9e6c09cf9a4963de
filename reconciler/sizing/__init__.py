"""Sizing a model's GPU memory from the model itself: its shape from ``config.json`` (``architecture``), and the
per-GPU figure a replica needs from that shape, the user's settings and a table of measured overheads
(``estimate``). Pure: the files are read by ``reconciler.spec.modelfiles``, which hands these modules plain data."""
