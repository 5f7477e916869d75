"""The autoencoders: the SD/SDXL KL VAE and TAESD, their configs and the key layouts users hold (LDM single files,
diffusers folders, ComfyUI's TAESD single file and the separate TAESD files), and the encode/decode wrapper with
tiling. May import: checkpoints and the base modules (which VAE a transformer pairs with is the transformer
config's to say).
"""
