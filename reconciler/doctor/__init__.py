"""`reconciler doctor`'s judgement: what a cluster's setup is (``facts``) and what to do about it (``judge``). Pure:
the adapter gathers the facts on each node, the renderers print the report."""
