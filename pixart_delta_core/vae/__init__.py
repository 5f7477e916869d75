"""The autoencoder: its config and the key layouts users hold (LDM single files, diffusers folders), and the
encode/decode wrapper with tiling. May import: checkpoints and the base modules (which VAE a transformer pairs
with is the transformer config's to say).
"""
