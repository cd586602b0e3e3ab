"""Explanations and how far to trust them: relevance maps, perturbations and faithfulness metrics.

Submodules: ``targets`` (what is explained: a class, or the similarity to a reference image),
``perturb`` (fills, masks, occlusion: one vocabulary), ``maps`` (every method and the baselines),
``relevance`` (Chefer et al. 2021 relevance propagation), ``libraries`` (Captum, pytorch-grad-cam,
torchcam adapters), ``faithfulness`` (deletion / insertion curves, localisation; re-exports the
rest), ``randomization`` (Adebayo et al. 2018's sanity check).
"""
