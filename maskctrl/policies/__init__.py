"""Policies built on the masked control transformer: one pretrained backbone, three ways to act with it.

Submodules are imported on demand, so that each one's optional dependencies stay optional:

- :mod:`maskctrl.policies.bc`: native behaviour cloning. :func:`~maskctrl.policies.bc.train_bc` fine-tunes
  the backbone's policy head (causal mask, history context) on expert episodes, from a pretrained
  checkpoint or from scratch, optionally with the trunk or its first blocks frozen (``maskctrl bc``).
- :mod:`maskctrl.policies.transformer_policy`: ``TransformerPolicy``, the policy head acting with
  Stable-Baselines3's ``predict`` contract, keeping each env's history; saved and loaded as a checkpoint.
- :mod:`maskctrl.policies.sb3`: ``MaskedControlExtractor``, a Stable-Baselines3 features extractor over
  ``HistoryWrapper`` (or plain ``Box``) observations, frozen or fine-tuned, and ``maskctrl_policy_kwargs``,
  which plugs it into PPO, SAC, ... through ``policy_kwargs``.
- :mod:`maskctrl.policies.imitation`: the ``imitation`` library's ``bc.BC`` with that extractor in an
  ``ActorCriticPolicy``, and its DAgger with oracle MPC as the expert (needs the ``imitation`` extra,
  which pins gymnasium 0.29: ``make setup-imitation``).
"""
