"""Probe heads on cached features: linear (BatchNorm without affine + Linear), MLP, CNN
and attention, plus scikit-learn baselines (logreg, knn).

API: ``probe.fit`` (:func:`probe.heads.fit.fit`) trains one head on one (t, block);
:func:`probe.heads.compare.compare` runs a grid of heads over many keys.
"""
