"""Text (and image) to image in stages: the pipeline, image conversions, the aspect-ratio bins and the ``generate``
command's arguments (``cli``).
May import everything below it: checkpoints, models, text, vae, quant, sampling.
"""
