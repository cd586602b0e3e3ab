"""Explanations and how far to trust them: relevance maps, perturbations and faithfulness metrics.

Submodules: ``faithfulness`` (maps, deletion / insertion curves, the randomisation check).
"""
