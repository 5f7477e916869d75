"""Training: configs, data and feature caches (keyed by contents), up-front checks, one loop and the trainers
(base, LCM, ControlNet, LoRA, autoencoder).

Training is the same engine (DESIGN.md principle 14): the trainers train the models ``models/`` defines,
save them in the layouts its loaders read, and reuse ``sampling/`` for the noise schedule and the LCM
boundary conditions. This subpackage may import everything below ``pipeline/`` (base modules,
checkpoints, quant, models, text, vae, sampling) and ``pipeline/resolution.py``'s bins and image
helpers; nothing in the engine imports it except the command line. Hugging Face ``accelerate`` and
``peft`` are imported inside the functions that need them.
"""
