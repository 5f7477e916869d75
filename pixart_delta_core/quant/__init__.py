"""Weight quantization with bitsandbytes (int8, NF4): the modes, the quantized layers and quantizing while
weights stream in. May import: checkpoints and the base modules; bitsandbytes only inside bnb_layers,
which loads when quantization is asked for.
"""
