#!/usr/bin/env bash
# The demo models from nothing, on procedural captioned shapes: data -> text tokenizer ->
# VQ-VAEs -> CogView GPT (text2image + image2text) -> super-resolution GPT -> export to
# pretrained/ -> evaluation (bench/RESULTS.md). Nothing is downloaded.
#
#   ./scripts/train_demo.sh                 # everything: about 6 h on 2 CPU cores
#   STEPS="export eval" ./scripts/train_demo.sh
#
# Every stage resumes: run the same command again after an interruption (Ctrl-C, a reboot)
# and finished stages are skipped, training continues from its last checkpoint (every 500
# iterations). Work files go to DEMO_DIR (default data/demo); nothing in PRETRAINED_DIR
# changes before the export stage. Each stage's time is appended to $DEMO_DIR/stage_times.tsv
# and the sum per stage printed at the end. The defaults below are the shipped models'
# settings; a GPU is used when there is one (FORCE_CPU=1 keeps it off).
set -euo pipefail
source "$(dirname "$(dirname "$(realpath "$0")")")/scripts/training_common.sh"
cd "$main_dir"

DEMO_DIR=${DEMO_DIR:-data/demo}
STEPS=${STEPS:-"tokenizer vqvae vqvae-base gpt-data gpt gpt-dropout sr-data sr export eval"}
SEED=${SEED:-1234}
IMG_SIZE=${IMG_SIZE:-64}                 # base model: 64 px, 8x8 codes ([TINY])
SR_IMG_SIZE=${SR_IMG_SIZE:-128}          # super-resolution model: SR_IMG_SIZE -> twice that
# VQ-VAE, in four stages (see the vqvae stages below for why each exists)
VQ_IMAGES=${VQ_IMAGES:-24000}            # 1: 64 px crops of SR_IMG_SIZE and twice-that renders
VQ_ITERS=${VQ_ITERS:-3500}
VQ_DECODER_IMAGES=${VQ_DECODER_IMAGES:-30000}  # 2 and 3: 1 in 3 a whole IMG_SIZE render
VQ_DECODER_ITERS=${VQ_DECODER_ITERS:-3000}     # 2: decoder alone (codes unchanged)
VQ_WHOLE_ITERS=${VQ_WHOLE_ITERS:-2000}         # 3: all of it -> shapes_vqvae.pt (super-resolution)
VQ_BASE_IMAGES=${VQ_BASE_IMAGES:-20000}        # 4: whole IMG_SIZE renders only
VQ_BASE_ITERS=${VQ_BASE_ITERS:-2500}           #    -> shapes_vqvae_base.pt (base GPT)
# base GPT: 8 layers, hidden 256, 8 heads; first without dropout (it learns the grammar
# faster), then from those weights with dropout (it generalises to unseen (colour, shape) pairs)
GPT_ROWS=${GPT_ROWS:-300000}
GPT_ITERS=${GPT_ITERS:-8000}
GPT_BATCH=${GPT_BATCH:-32}
GPT_LR=${GPT_LR:-1.5e-3}
GPT_POSITIONS=${GPT_POSITIONS:-$(( (IMG_SIZE / 8) ** 2 + 32 ))}  # codes + captions (<= 15 pieces) + 4 marks
GPT_WEIGHT_DECAY=${GPT_WEIGHT_DECAY:-0.1} # AdamW weight decay, both runs
GPT_INIT=${GPT_INIT:-}                  # start the GPT from these weights (a release folder) instead of scratch
GPT_DROPOUT_ITERS=${GPT_DROPOUT_ITERS:-2000}  # the second run, from the first's weights
GPT_DROPOUT_LR=${GPT_DROPOUT_LR:-5e-4}
GPT_DROPOUT=${GPT_DROPOUT:-0.1}         # its hidden and attention dropout (the original's 0.1)
# super-resolution GPT: 6 layers, hidden 192, 6 heads
SR_ROWS=${SR_ROWS:-72000}
SR_ITERS=${SR_ITERS:-5500}
SR_BATCH=${SR_BATCH:-16}
SR_LR=${SR_LR:-1e-3}
SR_TEXT_LENGTH=${SR_TEXT_LENGTH:-20}    # captions padded to this many tokens (0: not padded)
SR_POSITIONS=${SR_POSITIONS:-352}       # position table: a whole row (329 + SR_TEXT_LENGTH)
SR_LOW_LEVEL=${SR_LOW_LEVEL:-0.25}      # share of rows that are whole-image low-level rows
SR_INIT=${SR_INIT:-}                    # start the super-resolution GPT from these weights instead of scratch
# sampling defaults recorded in the exported model_config.json files
IMAGE_GUIDANCE=${IMAGE_GUIDANCE:-0.8}   # text2image --guidance-scale (0: off)
IMAGE_GUIDANCE_TOP_K=${IMAGE_GUIDANCE_TOP_K:-2} # ... among that many most likely codes (--guidance-top-k)
POST_SELECT=${POST_SELECT:-8}           # text2image --post-select: best of this many by the caption score
CAPTION_GUIDANCE=${CAPTION_GUIDANCE:-0.5} # image2text --guidance-scale (0: off)
CAPTION_RERANK_WEIGHT=${CAPTION_RERANK_WEIGHT:-3} # image2text --caption-rerank-weight
SR_TOP_K=${SR_TOP_K:-1}                 # super-resolution --top_k (1: the most likely code)
PRETRAINED_DIR=${PRETRAINED_DIR:-pretrained}   # where the export stage puts the finished models
RESULTS=${RESULTS-bench/RESULTS.md}           # where the evaluation and the stage times go (empty: nowhere)
EVAL_ARGS=${EVAL_ARGS:-}                       # more demo/evaluate.py flags for the eval stage

main() {
  # the whole recipe is read before it runs, so editing this file cannot change a running stage
  local work="$DEMO_DIR/release" ckpt="$DEMO_DIR/checkpoints"
  local tokenizer="$work/text_tokenizer/shapes" vqvae="$work/vqvae/shapes_vqvae.pt"
  local vqvae_base="$work/vqvae/shapes_vqvae_base.pt"
  if has_gpu; then DEVICE=(--device cuda); else cpu_environment; DEVICE=(--device cpu); fi
  mkdir -p "$DEMO_DIR" "$ckpt"
  record_killed_sitting
  local all=(tokenizer vqvae vqvae-base gpt-data gpt gpt-dropout sr-data sr export eval) name k=0
  for name in $STEPS; do
    [[ " ${all[*]} " == *" $name "* ]] || { echo "error: STEPS: no stage '$name' (stages: ${all[*]})" >&2; exit 2; }
  done
  for name in "${all[@]}"; do
    k=$((k + 1))
    [[ " $STEPS " == *" $name "* ]] || continue
    stage "$k/${#all[@]}" "$name"
  done
  say "done; stage times (seconds, summed over sittings) in $DEMO_DIR/stage_times.tsv:"
  [ ! -f "$DEMO_DIR/stage_times.tsv" ] ||
    "$PYTHON" -m demo.stage_times "$DEMO_DIR/stage_times.tsv" ${RESULTS:+--write-results "$RESULTS"}
}

say() { echo "== train_demo: $* ($(date +%H:%M:%S))" >&2; }

# stage <k/n> <name>: runs stage_<name> unless its output is there, and appends its time,
# also when the sitting ends inside it (Ctrl-C, kill, an error): resumed, it adds another line.
# A sitting killed outright (kill -9, power loss) runs no trap; its marker file, touched every
# 30 s while the stage runs, gives that sitting's time when the next run starts.
stage() {
  local n=$1 name=$2
  if "done_${name//-/_}"; then say "[$n] $name: done already"; return; fi
  say "[$n] $name"
  STAGE_START=$(date +%s)
  printf '%s\t%s\n' "$name" "$STAGE_START" > "$DEMO_DIR/stage_running"
  ( while kill -0 $$ 2>/dev/null && [ -f "$DEMO_DIR/stage_running" ]; do
      touch "$DEMO_DIR/stage_running"; sleep 30; done ) >/dev/null 2>&1 &
  # shellcheck disable=SC2064  # the name now: a stage's own functions may set a local "name"
  trap "record_time $name stopped" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  "stage_${name//-/_}"
  trap - EXIT INT TERM
  record_time "$name" finished
}
record_time() {
  rm -f "$DEMO_DIR/stage_running"
  time_line "$1" "$(( $(date +%s) - STAGE_START ))" "$(date -u +%FT%TZ)" "$2"
}
time_line() {
  [ -f "$DEMO_DIR/stage_times.tsv" ] || printf 'stage\tseconds\tended\thow\n' > "$DEMO_DIR/stage_times.tsv"
  printf '%s\t%s\t%s\t%s\n' "$@" >> "$DEMO_DIR/stage_times.tsv"
}
# a marker left behind means the last sitting was killed inside that stage: its time runs from
# the stage's start to the marker's last touch
record_killed_sitting() {
  local marker="$DEMO_DIR/stage_running" name start last
  [ -f "$marker" ] || return 0
  read -r name start < "$marker" || true
  last=$(stat -c %Y "$marker")
  rm -f "$marker"
  [[ $start =~ ^[0-9]+$ ]] || return 0
  time_line "$name" "$(( last - start ))" "$(date -u -d "@$last" +%FT%TZ)" killed
}

# the iteration a training run's tracker names (0 when it has none)
trained_to() { cat "$1/latest_checkpointed_iteration.txt" 2>/dev/null || echo 0; }

done_tokenizer() { [ -f "$tokenizer.model" ]; }
stage_tokenizer() {
  "$PYTHON" -m demo.make_data captions --out "$DEMO_DIR/captions.txt"
  "$PYTHON" -m demo.make_data tokenizer --captions "$DEMO_DIR/captions.txt" --out "$tokenizer"
}

# vq_train <run> <data> <iterations> <lr> [flags...]: vqvae.train resuming its own run
vq_train() {
  local run=$1 data=$2 iters=$3 lr=$4
  shift 4
  "$PYTHON" -m vqvae.train --data "$data" --save "$ckpt/$run" --resume --batch-size 32 --lr "$lr" \
      --iters "$iters" --log-interval 100 --save-interval 500 --keep-last 2 --num-workers 1 "${DEVICE[@]}" "$@"
}
# vq_images <lmdb> <count> [flags...]: rendered training images, unless already built
vq_images() {
  local out=$1 num=$2
  shift 2
  [ -d "$out" ] || "$PYTHON" -m demo.make_data vqvae-images --out "$out" --num "$num" --seed "$SEED" "$@"
}
vq_export() { "$PYTHON" -m training.export_release vqvae "$ckpt/$1/vqvae_$(cat "$ckpt/$1/latest").pt" "$2"; }

done_vqvae() { [ -f "$vqvae" ]; }
stage_vqvae() {
  # 1: 64 px crops of SR_IMG_SIZE and twice-that renders (the super-resolution model's input
  # and output); being convolutional it encodes any size
  vq_images "$DEMO_DIR/vqvae_images.lmdb" "$VQ_IMAGES" --img-size "$SR_IMG_SIZE"
  vq_train vqvae "$DEMO_DIR/vqvae_images.lmdb" "$VQ_ITERS" 6e-4 --img-size 64 --channel 64 --n-res-block 2 \
      --embed-dim 32 --n-embed 512 --stride 6 --dead-code-threshold 0.5
  # 2: the codes hold each small shape, but a decoder trained on crops of bigger renders
  # draws them blurred: the decoder alone, 1 image in 3 a whole IMG_SIZE render
  vq_images "$DEMO_DIR/vqvae_decoder_images.lmdb" "$VQ_DECODER_IMAGES" --img-size "$SR_IMG_SIZE" \
      --whole-size "$IMG_SIZE"
  vq_train vqvae-decoder "$DEMO_DIR/vqvae_decoder_images.lmdb" "$VQ_DECODER_ITERS" 6e-4 --init "$ckpt/vqvae" \
      --decoder-only --img-size 64
  # 3: all of it on the same images: encoder and codebook see whole small scenes too
  # (64 px shape ceiling 60 -> 72%); the super-resolution GPT trains on these codes
  vq_train vqvae-whole "$DEMO_DIR/vqvae_decoder_images.lmdb" "$VQ_WHOLE_ITERS" 3e-4 --init "$ckpt/vqvae-decoder" \
      --img-size 64 --dead-code-threshold 0.5
  vq_export vqvae-whole "$vqvae"
}

done_vqvae_base() { [ -f "$vqvae_base" ]; }
stage_vqvae_base() {
  # 4: from stage 3, on whole IMG_SIZE renders alone: small stars and crosses get codes of
  # their own (64 px shape ceiling 72 -> 82% one object, 56 -> 85% two); the base GPT's
  vq_images "$DEMO_DIR/vqvae_base_images.lmdb" "$VQ_BASE_IMAGES" --img-size "$IMG_SIZE" --whole-only
  vq_train vqvae-base "$DEMO_DIR/vqvae_base_images.lmdb" "$VQ_BASE_ITERS" 3e-4 --init "$vqvae" \
      --img-size "$IMG_SIZE" --dead-code-threshold 0.5
  vq_export vqvae-base "$vqvae_base"
}

done_gpt_data() { [ -d "$DEMO_DIR/gpt.lmdb" ]; }
stage_gpt_data() {
  # text->image and image->text rows (35%), English and Chinese, on the base VQ-VAE's codes
  "$PYTHON" -m demo.make_data gpt --out "$DEMO_DIR/gpt.lmdb" --num "$GPT_ROWS" --seed "$SEED" \
      --img-size "$IMG_SIZE" --vqvae "$vqvae_base" --txt-tokenizer-path "$tokenizer.model"
}

# train_gpt <run> <data> <iterations> <batch> <positions> <layers> <hidden> <heads> <lr> [flags...]
# (INIT: first run from those weights; DROPOUT, WEIGHT_DECAY, TRAIN_VQVAE, TRAIN_IMG_SIZE)
train_gpt() {
  local run=$1 data=$2 iters=$3 batch=$4 positions=$5 layers=$6 hidden=$7 heads=$8 lr=$9
  shift 9
  mkdir -p "$ckpt/$run"  # a fixed folder: --load of an empty folder starts from scratch
  local load=(--load "$ckpt/$run")  # resume this run when it has a checkpoint
  if [ ! -f "$ckpt/$run/latest_checkpointed_iteration.txt" ] && [ -n "${INIT:-}" ]; then
    # first run from given weights: weights only, iteration 0. The run is named after the
    # --load folder, so the weights are reached through a link named like this run.
    mkdir -p "$DEMO_DIR/init"
    ln -sfn "$(realpath "$INIT")" "$DEMO_DIR/init/$run"
    load=(--load "$DEMO_DIR/init/$run" --finetune)
  fi
  "$PYTHON" pretrain_gpt2.py --experiment-name "$run" "${load[@]}" --save "$ckpt" \
      --train-data "$data" --dataset-type TokenizedDataset --split 995,5,0 \
      --img-tokenizer-path "$TRAIN_VQVAE" --txt-tokenizer-path "$tokenizer.model" --img-size "$TRAIN_IMG_SIZE" \
      --num-layers "$layers" --hidden-size "$hidden" --num-attention-heads "$heads" \
      --max-position-embeddings "$positions" --make-vocab-size-divisible-by 64 --max-memory-length 0 \
      --batch-size "$batch" --train-iters "$iters" --lr "$lr" --lr-decay-style cosine --warmup 0.02 \
      --weight-decay "${WEIGHT_DECAY:-0.01}" --clip-grad 1.0 \
      --hidden-dropout "${DROPOUT:-0}" --attention-dropout "${DROPOUT:-0}" \
      --save-interval 500 --eval-interval 1000 --eval-iters 10 --log-interval 100 \
      --resume-dataloader --num-workers 1 --seed "$SEED" --summary-dir "$ckpt/tensorboard" \
      "${DEVICE[@]}" --bf16 "$@"
}

done_gpt() { [ "$(trained_to "$ckpt/cogview-demo-fit")" -ge "$GPT_ITERS" ]; }
stage_gpt() {
  # without dropout: at 3,000 iterations a lower validation loss (0.56 vs 0.645) and larger
  # two-object relation margins than a run with dropout from the start (docs/demo-design.md)
  INIT=$GPT_INIT WEIGHT_DECAY=$GPT_WEIGHT_DECAY TRAIN_VQVAE=$vqvae_base TRAIN_IMG_SIZE=$IMG_SIZE \
  train_gpt cogview-demo-fit "$DEMO_DIR/gpt.lmdb" "$GPT_ITERS" "$GPT_BATCH" "$GPT_POSITIONS" 8 256 8 "$GPT_LR"
}

done_gpt_dropout() { [ "$(trained_to "$ckpt/cogview-demo")" -ge "$GPT_DROPOUT_ITERS" ]; }
stage_gpt_dropout() {
  # Dropout and weight decay 0.1: without them the GPT draws a (colour, shape) pair it never
  # saw as a shape it has seen with that colour (docs/demo-design.md). Weights only from the
  # first run, then a fresh cosine schedule at a lower rate.
  INIT=$ckpt/cogview-demo-fit DROPOUT=$GPT_DROPOUT WEIGHT_DECAY=$GPT_WEIGHT_DECAY TRAIN_VQVAE=$vqvae_base \
  TRAIN_IMG_SIZE=$IMG_SIZE train_gpt cogview-demo "$DEMO_DIR/gpt.lmdb" "$GPT_DROPOUT_ITERS" "$GPT_BATCH" \
      "$GPT_POSITIONS" 8 256 8 "$GPT_DROPOUT_LR"
}

done_sr_data() { [ -d "$DEMO_DIR/sr.lmdb" ]; }
stage_sr_data() {
  # magnify's windows (SR_IMG_SIZE -> twice) and, SR_LOW_LEVEL of them, whole images at half
  # SR_IMG_SIZE -> SR_IMG_SIZE: the low-level super-resolution query, which a model trained on
  # windows alone answers with noise
  "$PYTHON" -m demo.make_data sr --out "$DEMO_DIR/sr.lmdb" --num "$SR_ROWS" --seed "$SEED" \
      --img-size "$SR_IMG_SIZE" --vqvae "$vqvae" --txt-tokenizer-path "$tokenizer.model" \
      --sr-text-length "$SR_TEXT_LENGTH" --low-level-fraction "$SR_LOW_LEVEL"
}

done_sr() { [ "$(trained_to "$ckpt/cogview-demo-sr")" -ge "$SR_ITERS" ]; }
stage_sr() {
  # Rows are 329 + SR_TEXT_LENGTH tokens. Captions padded to SR_TEXT_LENGTH put the low-res
  # codes at fixed positions, and positions count on through the row (no restart at [ROI2];
  # model_config.json records it), so --magnify-position-init starts each high-res code's
  # position row next to the row of the low-res code it magnifies (arch/magnify_positions.py).
  INIT=$SR_INIT TRAIN_VQVAE=$vqvae TRAIN_IMG_SIZE=$SR_IMG_SIZE train_gpt cogview-demo-sr "$DEMO_DIR/sr.lmdb" \
      "$SR_ITERS" "$SR_BATCH" "$SR_POSITIONS" 6 192 6 "$SR_LR" \
      --magnify-position-init --sr-text-length "$SR_TEXT_LENGTH"
}

done_export() { return 1; }  # always runs: cheap, and the files must match the checkpoints
stage_export() {
  local pre=$PRETRAINED_DIR name
  for name in cogview-demo cogview-demo-sr; do
    [ "$(trained_to "$ckpt/$name")" -gt 0 ] || { echo "error: $ckpt/$name has no checkpoint to export; run its stage" >&2; exit 1; }
  done
  mkdir -p "$pre/text_tokenizer" "$pre/vqvae" "$pre/cogview"
  copy() { cp "$1" "$2.tmp" && mv -f "$2.tmp" "$2"; }  # a whole file or none
  copy "$tokenizer.model" "$pre/text_tokenizer/shapes.model"
  copy "$tokenizer.vocab" "$pre/text_tokenizer/shapes.vocab"
  copy "$vqvae" "$pre/vqvae/shapes_vqvae.pt"
  copy "$vqvae_base" "$pre/vqvae/shapes_vqvae_base.pt"
  # the both-directions model: images drawn with guidance among the IMAGE_GUIDANCE_TOP_K most
  # likely codes, the best of POST_SELECT first; captions drawn with guidance and ranked by
  # log p(image | caption) + CAPTION_RERANK_WEIGHT log p(caption | image)
  export_gpt cogview-demo "$pre/vqvae/shapes_vqvae_base.pt" \
      --guidance-scale "text2image=$IMAGE_GUIDANCE" --guidance-top-k "text2image=$IMAGE_GUIDANCE_TOP_K" \
      --post-select "$POST_SELECT" \
      --guidance-scale "image2text=$CAPTION_GUIDANCE" --caption-rerank --caption-rerank-weight "$CAPTION_RERANK_WEIGHT"
  export_gpt cogview-demo-sr "$pre/vqvae/shapes_vqvae.pt" --top-k "$SR_TOP_K"
}
# export_gpt <name> <vqvae> [flags...]: fp16 release folder, written beside and swapped in
export_gpt() {
  local name=$1 img_tokenizer=$2 dst="$PRETRAINED_DIR/cogview/$1"
  shift 2
  rm -rf "$dst.tmp" "$dst.old"
  "$PYTHON" -m training.export_release gpt "$ckpt/$name" "$dst.tmp" --dtype float16 \
      --img-tokenizer-path "$img_tokenizer" --txt-tokenizer-path "$PRETRAINED_DIR/text_tokenizer/shapes.model" "$@"
  # model_config.json paths are relative to the folder, which keeps its depth: valid after the rename
  [ ! -d "$dst" ] || mv "$dst" "$dst.old"
  mv "$dst.tmp" "$dst"
  rm -rf "$dst.old"
}

done_eval() { return 1; }
stage_eval() {
  # held-out prompts and images, scored by the grammar's checker (demo/evaluate.py)
  # shellcheck disable=SC2086  # EVAL_ARGS is a list of flags
  "$PYTHON" -m demo.evaluate --model "$PRETRAINED_DIR/cogview/cogview-demo" \
      --sr-model "$PRETRAINED_DIR/cogview/cogview-demo-sr" --json "$DEMO_DIR/eval.json" \
      ${RESULTS:+--write-results "$RESULTS"} $EVAL_ARGS
}

main "$@"; exit
