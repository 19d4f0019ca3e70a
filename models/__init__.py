"""The bundled avatar video model (docs/model.md) and its streaming distillation (docs/distillation.md).

dit.py (the DiT), layers.py (RoPE, attention), avatar.py (DiT + text encoder), vae.py, audio.py, text.py
(front ends), data.py (ClipStream samples -> tensors, the synthetic mouth source), flow.py (flow
matching, sampler), tasks.py, config.py, checkpoint.py, ema.py, train.py (runs: one process or Ray
Train + FSDP2; the only module importing torch.distributed), generate.py; configs/ the YAML configs.
"""
