"""Reading weights safely and mapping key layouts.

Files (safetensors, PyTorch .pth, diffusers folders) open as a ``TensorSource`` without unpickling code;
``layouts`` holds the declarative key tables between another layout's names and ours; ``detection``
the helpers every model's detection shares; ``loading`` the strict, streaming fill of a meta-device
module. May import: the package's base modules (errors, memory) and torch/safetensors only.
"""
