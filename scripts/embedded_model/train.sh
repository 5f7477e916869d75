#!/usr/bin/env bash
# How the embedded model (pixart_delta_core/embedded_model/) was made, step by step, on a 2-core CPU: about 12 hours
# in all (the run times in MODEL_CARD.md's files table sum to over 11 h, with the two feature caches it times; the
# world's scenes, the T5s and the other feature caches come on top, and many runs shared the cores with other work).
# Training needs the pack's train extra (accelerate, and tomli before Python 3.11), once, from the repository root:
#     .venv/bin/python -m pip install -e ".[train]"
# Run it from the repository root (PYTHON=... for another interpreter than .venv/bin/python). Every run is written
# under outputs/embedded/ (about 12 GB of checkpoints in all: a teacher run of 4,000 steps keeps 1.6 GB); the last
# step writes the new models over the pack's shipped ones in pixart_delta_core/embedded_model/ (`git checkout --
# pixart_delta_core/embedded_model` restores them). Run anew, it does not make the shipped files bit for bit: some
# runs were stopped and continued with another step count or schedule (their comments say how; the script runs the
# final config straight through), and the thread counts and what shared the cores differed.
# After an interruption, run it again as it is: what is made already is kept (a line says so), a finished training
# run is skipped (the trainer says "already at step N of N: nothing was trained"), and an interrupted one goes on
# from its newest checkpoint with --resume (checkpoints come every train.checkpoint_every steps; a resumed run
# draws the same batches and noise as an unbroken one).
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
M=scripts/embedded_model
W=outputs/embedded/world

say() { echo "train.sh: $*"; }
# Whether the run of config $1 has a complete checkpoint in its train.output (found as training.loop's
# latest_checkpoint finds them): "yes" or nothing.
BEGUN='import logging, sys; logging.disable(logging.WARNING)
from pixart_delta_core.training.config_file import load_config
print("yes" if any(load_config(sys.argv[1]).train.output.glob("checkpoints/step-*/step.json")) else "")'
# train METHOD NAME: the run of $M/NAME.toml; with --resume where it has begun (the trainer skips it when finished).
train() {
    local begun
    begun=$("$PY" -c "$BEGUN" "$M/$2.toml")
    say "$M/$2.toml${begun:+ (its run has a checkpoint: --resume)}"
    "$PY" -m pixart_delta_core train "$1" --config "$M/$2.toml" ${begun:+--resume}
}
# once FILE MAKER: FILE written from the function MAKER's output, unless it is there (FILE.part, then renamed)
once() {
    if [ -f "$1" ]; then say "$1 is there already"; else "$2" > "$1.part"; mv "$1.part" "$1"; fi
}

# 1. the data: 8,000 scenes of the shapes world (seeds 0-7999), their captions and edge maps. world refuses to write
#    over a data set or part of one, so an interrupted one (no data.jsonl: it comes last) is removed and drawn anew
if [ -f $W/data.jsonl ]; then
    say "$W is there already"
else
    rm -rf $W $W-part
    "$PY" -m pixart_delta_core world --out $W-part --count 8000 --first-seed 0
    mv $W-part $W  # $W was removed above, so this renames the folder
fi
# 2. the T5 encoders, frozen, with T5's tokenizer (the copy the pack ships beside them): random (seed 0) for teacher.toml
#    and teacher-more.toml, and the same weights with each head's attention kept within a window of
#    neighbouring words (demo.embedded.T5_WINDOWS) for teacher-windowed.toml and everything after it
"$PY" -c "import shutil; from pathlib import Path; from pixart_delta_core.demo.embedded import T5_WINDOWS, write_t5
tokenizer = Path('pixart_delta_core/embedded_model/text_encoders/shapes-t5')
for name, windows in (('t5', None), ('t5-windowed', T5_WINDOWS)):
    folder, part = Path('outputs/embedded', name), Path('outputs/embedded', name + '-part')
    if folder.exists():
        print(f'train.sh: {folder} is there already')
        continue
    shutil.rmtree(part, ignore_errors=True)
    write_t5(part, tokenizer, windows=windows).rename(folder)"
# 3. the autoencoder (TAESD architecture). It was first run with steps = 1200; its pictures then still had
#    green, blue, purple and cyan as greys, so steps went to 2400 and the run continued with --resume.
train autoencoder autoencoder
#    Its decoder alone then trained on 64 px crops (encoder, latents and their scale/shift kept): first run
#    with steps = 1000 at a low priority beside an earlier teacher, stopped at step 350, continued with
#    steps = 600 and --resume.
train autoencoder decoder
#    Then 50 gentle decoder steps more that spread the latents to a standard deviation of 4
#    (autoencoder.latent_std): only vae_scale and vae_shift change much.
train autoencoder spread
# 4. the teacher, from scratch (P2 loss weighting, Xavier-started timestep and caption MLPs)
train base teacher
#    then 4,000 steps more from its weights (a fresh optimizer and cosine schedule): its loss was still falling
train base teacher-more
#    then 3,500 steps more on the windowed T5: with the random one, two shapes' colours were often swapped
train base teacher-windowed
#    then 4,000 steps more at a lower learning rate: its colours were still getting better
train base teacher-windowed-more
# 5. the ControlNet on that teacher (on the first 2,000 scenes)
control_data() { head -n 2000 $W/data.jsonl; }
once $W/control.jsonl control_data
train controlnet controlnet
#    Every run from here on went on other machines, where the fp32 checkpoints of the teacher, the autoencoder and
#    the ControlNet above were lost: the runs whose configs name them started from the fp16 copies shipped in the
#    pack at commit 1c1eedc, upcast (the T5 ships as written), with both feature caches built anew from them. So
#    here those three checkpoints are rounded to fp16 in place, as such a copy reads back (ship.py --as-shipped),
#    and the two caches made from the fp32 autoencoder are removed, once (the file below marks it done).
if [ -f outputs/embedded/as-shipped-1c1eedc ]; then
    say "the checkpoints are rounded as shipped already (outputs/embedded/as-shipped-1c1eedc)"
else
    rm -rf outputs/embedded/cache-windowed outputs/embedded/cache-control-windowed
    "$PY" $M/ship.py --as-shipped \
        outputs/embedded/teacher-windowed-more/checkpoints/step-0004000/transformer.safetensors \
        outputs/embedded/controlnet-windowed-more/checkpoints/step-0000900/controlnet.safetensors \
        outputs/embedded/spread/checkpoints/step-0000050/autoencoder.safetensors
    touch outputs/embedded/as-shipped-1c1eedc
fi
#    Then the ControlNet 1,800 steps more from its last weights, and 1,800 steps more again at half the learning rate.
train controlnet controlnet-more
train controlnet controlnet-more-2
# 6. the teacher 6,000 steps more (ended there by stop_at, of 7,000: see its config), from the fp16 teacher shipped from
#    commit 1c1eedc, upcast; then the LCM student distilled from it (lcm.toml: the teacher guided at 4.5; it ran on
#    two threads, beside an evaluation) and the ControlNet 1,200 steps more on it (controlnet-more-3.toml; one thread)
train base teacher-windowed-long
train lcm lcm
train controlnet controlnet-more-3
# 7. the decoder once more (decoder-stars.toml, encoder frozen: the latents, and so every model above, stay as they
#    are), on the world's pictures with each scene that holds a star on white or gray three times over. It started
#    from the fp16 autoencoder shipped from commit 864fb99 (the same file as at 1c1eedc), upcast: the spread run's
#    checkpoint, rounded so in step 5
stars_data() {
    cat $W/data.jsonl
    for _ in 1 2; do grep star $W/data.jsonl | grep -v 'black background'; done
}
once $W/decoder-stars.jsonl stars_data
train autoencoder decoder-stars
#    then on from it at half the learning rate, each scene with a star on gray six times over, on white three times
gray_data() {
    cat $W/data.jsonl
    for _ in 1 2 3 4 5; do grep star $W/data.jsonl | grep 'gray background'; done
    for _ in 1 2; do grep star $W/data.jsonl | grep 'white background'; done
}
once $W/decoder-gray.jsonl gray_data
train autoencoder decoder-gray
#    then on from it with each scene that holds a purple shape on gray five times more (its round trip drew them as
#    light gray; they stayed so, but its stars on white and gray improved), then 600 steps more on decoder-gray's data
purple_data() {
    cat $W/decoder-gray.jsonl
    for _ in 1 2 3 4 5; do grep purple $W/data.jsonl | grep 'gray background'; done
}
once $W/decoder-purple.jsonl purple_data
train autoencoder decoder-purple
train autoencoder decoder-gray-more
# 8. into the pack, in fp16, over the shipped files
say "writing the new models over the shipped ones in pixart_delta_core/embedded_model/"
"$PY" $M/ship.py outputs/embedded/teacher-windowed-long/checkpoints/step-0006000/transformer.safetensors \
    outputs/embedded/lcm-long-g45/checkpoints/step-0000600/transformer.safetensors \
    outputs/embedded/controlnet-long/checkpoints/step-0001200/controlnet.safetensors \
    outputs/embedded/decoder-gray-more/checkpoints/step-0000600/autoencoder.safetensors outputs/embedded/t5-windowed
