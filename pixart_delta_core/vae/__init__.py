"""The autoencoder: its config and the key layouts users hold (LDM single files, diffusers folders), and the
encode/decode wrapper with tiling. May import: checkpoints, models' configs and the base modules.
"""
