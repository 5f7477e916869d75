"""Reading weights safely and mapping key layouts.

Files (safetensors, PyTorch .pth, diffusers folders) open as a ``TensorSource`` without unpickling code;
``layouts`` holds the declarative key tables between another layout's names and ours; ``detection``
the generic ``DetectedCheckpoint`` every model's detection returns and the helpers they share (finding
the one key prefix a model sits under, reading shapes, naming look-alikes); ``hints`` the rule by which a
caller's detection hints meet what a checkpoint says; ``loading`` the strict, streaming fill of a meta-device
module. May import: the package's base modules (errors, memory) and
torch/safetensors only.
"""
