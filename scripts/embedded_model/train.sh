#!/bin/sh
# How the embedded model (pixart_delta_core/embedded_model/) was made, step by step, on a 2-core CPU.
# Each training run writes resumable checkpoints: after an interruption, run the same command with --resume,
# then the commands after it (a finished run refuses to start again over its checkpoints).
# Run from the repository root; everything is written under outputs/embedded/.
set -e
PY=${PYTHON:-.venv/bin/python}
M=scripts/embedded_model

# 1. the data: 8,000 scenes of the shapes world (seeds 0-7999), their captions and edge maps (once: world refuses
#    to write over a data set)
[ -f outputs/embedded/world/data.jsonl ] || $PY -m pixart_delta_core world --out outputs/embedded/world --count 8000 --first-seed 0
# 2. the T5 encoders, frozen, with T5's tokenizer (the copy the pack ships beside them): random (seed 0) for teacher.toml
#    and teacher-more.toml, and the same weights with each head's attention kept within a window of
#    neighbouring words (demo.embedded.T5_WINDOWS) for teacher-windowed.toml and everything after it
$PY -c "from pathlib import Path; from pixart_delta_core.demo.embedded import write_t5; \
tokenizer = Path('pixart_delta_core/embedded_model/text_encoders/shapes-t5'); \
write_t5(Path('outputs/embedded/t5'), tokenizer, windows=None); write_t5(Path('outputs/embedded/t5-windowed'), tokenizer)"
# 3. the autoencoder (TAESD architecture). It was first run with steps = 1200; its pictures then still had
#    green, blue, purple and cyan as greys, so steps went to 2400 and the run continued with --resume.
$PY -m pixart_delta_core train autoencoder --config $M/autoencoder.toml
#    Its decoder alone then trained on 64 px crops (encoder, latents and their scale/shift kept): first run
#    with steps = 1000 at a low priority beside an earlier teacher, stopped at step 350, continued with
#    steps = 600 and --resume.
$PY -m pixart_delta_core train autoencoder --config $M/decoder.toml
#    Then 50 gentle decoder steps more that spread the latents to a standard deviation of 4
#    (autoencoder.latent_std): only vae_scale and vae_shift change much.
$PY -m pixart_delta_core train autoencoder --config $M/spread.toml
# 4. the teacher, from scratch (P2 loss weighting, Xavier-started timestep and caption MLPs)
$PY -m pixart_delta_core train base --config $M/teacher.toml
#    then 4,000 steps more from its weights (a fresh optimizer and cosine schedule): its loss was still falling
$PY -m pixart_delta_core train base --config $M/teacher-more.toml
#    then 3,500 steps more on the windowed T5: with the random one, two shapes' colours were often swapped
$PY -m pixart_delta_core train base --config $M/teacher-windowed.toml
#    then 4,000 steps more at a lower learning rate: its colours were still getting better
$PY -m pixart_delta_core train base --config $M/teacher-windowed-more.toml
# 5. the ControlNet on that teacher, then 1,800 steps more from its last weights. This second run went on a new
#    machine, from the fp16 copies shipped in the pack (the fp32 checkpoints named in its config were lost with
#    the old one): the teacher, the autoencoder, the T5 and the ControlNet of commit 1c1eedc, upcast, with both
#    feature caches built anew from them. Then the ControlNet 1,800 steps more again, at half the learning rate.
head -n 2000 outputs/embedded/world/data.jsonl > outputs/embedded/world/control.jsonl
$PY -m pixart_delta_core train controlnet --config $M/controlnet.toml
$PY -m pixart_delta_core train controlnet --config $M/controlnet-more.toml
$PY -m pixart_delta_core train controlnet --config $M/controlnet-more-2.toml
# 6. the teacher 6,000 steps more (ended there by stop_at, of 7,000: see its config), from the fp16 teacher shipped from
#    commit 1c1eedc, upcast; then, side by side (one thread each), the LCM student distilled from it (lcm.toml:
#    the teacher guided at 4.5) and the ControlNet 1,200 steps more on it (controlnet-more-3.toml)
$PY -m pixart_delta_core train base --config $M/teacher-windowed-long.toml
$PY -m pixart_delta_core train lcm --config $M/lcm.toml
$PY -m pixart_delta_core train controlnet --config $M/controlnet-more-3.toml
# 7. the decoder once more (decoder-stars.toml, encoder frozen: the latents, and so every model above, stay as they
#    are), on the world's pictures with each scene that holds a star on white or gray three times over. It started
#    from the fp16 autoencoder shipped from commit 864fb99, upcast (the spread run's checkpoint was lost with an
#    earlier machine)
(cat outputs/embedded/world/data.jsonl; for copy in 1 2; do grep star outputs/embedded/world/data.jsonl | grep -v 'black background'; done) \
    > outputs/embedded/world/decoder-stars.jsonl
$PY -m pixart_delta_core train autoencoder --config $M/decoder-stars.toml
#    then on from it at half the learning rate, each scene with a star on gray six times over, on white three times
(cat outputs/embedded/world/data.jsonl; for copy in 1 2 3 4 5; do grep star outputs/embedded/world/data.jsonl | grep 'gray background'; done
 for copy in 1 2; do grep star outputs/embedded/world/data.jsonl | grep 'white background'; done) > outputs/embedded/world/decoder-gray.jsonl
$PY -m pixart_delta_core train autoencoder --config $M/decoder-gray.toml
#    then on from it with each scene that holds a purple shape on gray five times more (its round trip drew them as
#    light gray; they stayed so, but its stars on white and gray improved), then 600 steps more on decoder-gray's data
(cat outputs/embedded/world/decoder-gray.jsonl; for copy in 1 2 3 4 5; do grep purple outputs/embedded/world/data.jsonl | grep 'gray background'; done) \
    > outputs/embedded/world/decoder-purple.jsonl
$PY -m pixart_delta_core train autoencoder --config $M/decoder-purple.toml
$PY -m pixart_delta_core train autoencoder --config $M/decoder-gray-more.toml
# 8. into the pack, in fp16
$PY $M/ship.py outputs/embedded/teacher-windowed-long/checkpoints/step-0006000/transformer.safetensors \
    outputs/embedded/lcm-long-g45/checkpoints/step-0000600/transformer.safetensors \
    outputs/embedded/controlnet-long/checkpoints/step-0001200/controlnet.safetensors \
    outputs/embedded/decoder-gray-more/checkpoints/step-0000600/autoencoder.safetensors outputs/embedded/t5-windowed
