#!/bin/sh
# How the embedded model (pixart_delta_core/embedded_model/) was made, step by step, on a 2-core CPU.
# Each training run writes resumable checkpoints: after an interruption, run the same command with --resume.
# Run from the repository root; everything is written under outputs/embedded/.
set -e
PY=${PYTHON:-.venv/bin/python}
M=scripts/embedded_model

# 1. the data: 8,000 scenes of the shapes world (seeds 0-7999), their captions and edge maps
$PY -m pixart_delta_core world --out outputs/embedded/world --count 8000 --first-seed 0
# 2. the T5 encoder: random (seed 0) and frozen, with T5's tokenizer (the copy the pack ships beside it)
$PY -c "from pathlib import Path; from pixart_delta_core.demo.embedded import write_t5; \
write_t5(Path('outputs/embedded/t5'), Path('pixart_delta_core/embedded_model/text_encoders/shapes-t5'))"
# 3. the autoencoder (TAESD architecture). It was first run with steps = 1200; its pictures then still had
#    green, blue, purple and cyan as greys, so steps went to 2400 and the run continued with --resume.
$PY -m pixart_delta_core train autoencoder --config $M/autoencoder.toml
#    Its decoder alone then trained on 64 px crops (encoder, latents and their scale/shift kept, so the
#    transformers below fit it either way): first run with steps = 1000 at a low priority beside the teacher,
#    stopped at step 350, continued with steps = 600 and --resume.
$PY -m pixart_delta_core train autoencoder --config $M/decoder.toml
# 4. the teacher, from scratch. (Later continued in its folder to 4,800 steps, train.steps = 4800 and --resume,
#    then 1,000 steps more with a v-prediction loss weighting: neither helped, MODEL_CARD.md; step 1200 ships.)
$PY -m pixart_delta_core train base --config $M/teacher.toml
# 5. the LCM student and the ControlNet, both from the teacher (they may run side by side)
$PY -m pixart_delta_core train lcm --config $M/lcm.toml
head -n 2000 outputs/embedded/world/data.jsonl > outputs/embedded/world/control.jsonl
$PY -m pixart_delta_core train controlnet --config $M/controlnet.toml
# 6. into the pack, in fp16
$PY $M/ship.py outputs/embedded/teacher/checkpoints/step-0001200/transformer.safetensors \
    outputs/embedded/lcm/checkpoints/step-0000200/transformer.safetensors \
    outputs/embedded/controlnet/checkpoints/step-0000200/controlnet.safetensors \
    outputs/embedded/decoder/checkpoints/step-0000600/autoencoder.safetensors outputs/embedded/t5
