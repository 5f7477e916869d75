"""Text (and image) to image in stages: the pipeline, image conversions and the aspect-ratio bins.
May import everything below it: checkpoints, models, text, vae, quant, sampling.
"""
