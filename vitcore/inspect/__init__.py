"""Reading a model without changing it: capture (traces of every stage), analysis of attention
(rollout, distances, similarities), DINO-style views and dense probes on the patch tokens.

Submodules: ``capture``, ``analysis``, ``views``, ``dense``. ``vitcore.capture`` (the function)
is re-exported at the top level.
"""
