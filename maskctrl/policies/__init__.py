"""Policies built on the masked control transformer.

Submodules are imported on demand, so that each one's optional dependencies stay optional:

- :mod:`maskctrl.policies.sb3`: ``MaskedControlExtractor``, a Stable-Baselines3 features extractor, and
  ``maskctrl_policy_kwargs``.
"""
