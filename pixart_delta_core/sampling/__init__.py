"""Schedules and samplers (pure functions over an explicit schedule), guidance and the ControlNet
schedule. May import: models, the VAE's config (latent channels and downscale), text's caption data
(``text.embedding``, never the T5 encoder) and the base modules.
"""
