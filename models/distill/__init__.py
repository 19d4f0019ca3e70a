"""Streaming distillation of the bundled DiT (docs/distillation.md): the chunk-wise causal student
(causal.py), and the stages that train it (ODE regression, DMD off- and on-policy, the refiner)."""
