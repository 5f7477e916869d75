"""The PixArt transformer and the ControlNet-Transformer: each ``<model>_config.py`` (frozen config and its
detection from the weights) beside ``<model>.py`` (the nn.Module and its loader), and the shared layers.
May import: checkpoints, quant, the VAE's config (which VAE a model pairs with) and the base modules (errors,
ops, devices, memory).
"""
