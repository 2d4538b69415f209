#!/usr/bin/env bash
# Train the shipped demo models from scratch on procedural captioned shapes:
#   text tokenizer -> VQ-VAE -> CogView GPT (text2image + image2text) -> super-resolution GPT,
# then export them to pretrained/ (what the generation scripts fall back to).
#
#   ./scripts/train_demo.sh                 # everything (about 3 h on 2 CPU cores)
#   STEPS="gpt export" ./scripts/train_demo.sh
#
# Every step is resumable: run the script again after an interruption and finished steps
# are skipped, training steps continue from their last checkpoint. Work files go to
# DEMO_DIR (default data/demo); a GPU is used when there is one.
# Sizes can be changed with the variables below. The shipped models used these sizes and
# trained longer than the 3-hour defaults, some stages starting from another stage's weights
# (GPT_INIT, SR_INIT): demo/README.md lists the stages.
set -euo pipefail
source "$(dirname "$(dirname "$(realpath "$0")")")/scripts/training_common.sh"
cd "$main_dir"

DEMO_DIR=${DEMO_DIR:-data/demo}
STEPS=${STEPS:-"tokenizer vqvae gpt-data gpt sr-data sr export"}
SEED=${SEED:-1234}
IMG_SIZE=${IMG_SIZE:-64}                 # base model: 64 px, 8x8 codes ([TINY]); see README "Image size"
SR_IMG_SIZE=${SR_IMG_SIZE:-128}          # super-resolution model: SR_IMG_SIZE -> twice that
VQ_ITERS=${VQ_ITERS:-3500}
GPT_ROWS=${GPT_ROWS:-300000}
GPT_ITERS=${GPT_ITERS:-5200}
GPT_BATCH=${GPT_BATCH:-32}
GPT_LR=${GPT_LR:-1.5e-3}
GPT_POSITIONS=${GPT_POSITIONS:-$(( (IMG_SIZE / 8) ** 2 + 32 ))}  # codes + captions (<= 15 pieces) + 4 marks
GPT_INIT=${GPT_INIT:-}                  # start the GPT from these weights (a release folder) instead of scratch
GPT_DROPOUT=${GPT_DROPOUT:-0.1}         # hidden and attention dropout of the base GPT (the original's 0.1)
GPT_WEIGHT_DECAY=${GPT_WEIGHT_DECAY:-0.1} # and its AdamW weight decay: both help held-out (colour, shape) pairs
SR_ROWS=${SR_ROWS:-24000}
SR_ITERS=${SR_ITERS:-1500}
SR_BATCH=${SR_BATCH:-16}
SR_LR=${SR_LR:-1e-3}
SR_INIT=${SR_INIT:-}                    # start the super-resolution GPT from these weights instead of scratch
SR_TEXT_LENGTH=${SR_TEXT_LENGTH:-20}    # super-resolution captions padded to this many tokens (0: not padded)
SR_POSITIONS=${SR_POSITIONS:-352}       # super-resolution position table: a whole row (329 + SR_TEXT_LENGTH)
SR_LOW_LEVEL=${SR_LOW_LEVEL:-0.25}      # share of super-resolution rows that are whole-image low-level rows
CAPTION_GUIDANCE=${CAPTION_GUIDANCE:-0.5} # image2text --guidance-scale recorded with the base GPT (0: off)
CAPTION_RERANK_WEIGHT=${CAPTION_RERANK_WEIGHT:-3} # image2text --caption-rerank-weight recorded with it
IMAGE_GUIDANCE=${IMAGE_GUIDANCE:-0.8}   # text2image --guidance-scale recorded with the base GPT (0: off)
IMAGE_GUIDANCE_TOP_K=${IMAGE_GUIDANCE_TOP_K:-2} # ... among that many most likely codes (--guidance-top-k)
VQ_IMAGES=${VQ_IMAGES:-24000}
VQ_DECODER_ITERS=${VQ_DECODER_ITERS:-4000}
VQ_DECODER_IMAGES=${VQ_DECODER_IMAGES:-30000}
VQ_WHOLE_ITERS=${VQ_WHOLE_ITERS:-2000}   # then encoder, codebook and decoder on the same images
VQ_BASE_ITERS=${VQ_BASE_ITERS:-3000}     # the base model's own VQ-VAE, on whole IMG_SIZE renders only
VQ_BASE_IMAGES=${VQ_BASE_IMAGES:-20000}
PRETRAINED_DIR=${PRETRAINED_DIR:-pretrained}   # where the finished models go
TOKENIZER=$PRETRAINED_DIR/text_tokenizer/shapes
VQVAE=$PRETRAINED_DIR/vqvae/shapes_vqvae.pt            # super-resolution model's (128 and 256 px)
VQVAE_BASE=$PRETRAINED_DIR/vqvae/shapes_vqvae_base.pt  # base model's (IMG_SIZE px)
CKPT="$DEMO_DIR/checkpoints"

if has_gpu; then DEVICE=(--device cuda); PRECISION=(--bf16); else
  cpu_environment  # one process using every core
  DEVICE=(--device cpu); PRECISION=(--bf16)
fi
want() { [[ " $STEPS " == *" $1 "* ]]; }
say() { echo "== train_demo: $* ($(date +%H:%M:%S))" >&2; }
mkdir -p "$DEMO_DIR" "$CKPT"

if want tokenizer && [ ! -f "$TOKENIZER.model" ]; then
  say "captions and sentencepiece tokenizer"
  "$PYTHON" -m demo.make_data captions --out "$DEMO_DIR/captions.txt"
  "$PYTHON" -m demo.make_data tokenizer --captions "$DEMO_DIR/captions.txt" --out "$TOKENIZER"
fi

if want vqvae && [ ! -f "$VQVAE" ]; then
  say "VQ-VAE ($VQ_ITERS iterations)"
  [ -d "$DEMO_DIR/vqvae_images.lmdb" ] || "$PYTHON" -m demo.make_data vqvae-images \
      --out "$DEMO_DIR/vqvae_images.lmdb" --num "$VQ_IMAGES" --img-size "$SR_IMG_SIZE" --seed "$SEED"
  # trained on 64 px crops of SR_IMG_SIZE and twice-that renders (the super-resolution
  # model's input and output); being convolutional it encodes any size (64 px included)
  "$PYTHON" -m vqvae.train --data "$DEMO_DIR/vqvae_images.lmdb" --save "$CKPT/vqvae" --resume \
      --img-size 64 --channel 64 --n-res-block 2 --embed-dim 32 --n-embed 512 --stride 6 \
      --batch-size 32 --lr 6e-4 --iters "$VQ_ITERS" --dead-code-threshold 0.5 \
      --log-interval 100 --save-interval 500 --keep-last 2 --num-workers 1 "${DEVICE[@]}"
  say "VQ-VAE decoder ($VQ_DECODER_ITERS iterations; encoder and codebook frozen)"
  # the codes hold each small shape (every shape of a 64 px scene gets its own code grid),
  # but the decoder above draws them blurred: it trained on crops of bigger renders. Here it
  # trains alone, 1 image in 3 a whole IMG_SIZE render; every image keeps its codes.
  [ -d "$DEMO_DIR/vqvae_decoder_images.lmdb" ] || "$PYTHON" -m demo.make_data vqvae-images \
      --out "$DEMO_DIR/vqvae_decoder_images.lmdb" --num "$VQ_DECODER_IMAGES" --img-size "$SR_IMG_SIZE" \
      --whole-size "$IMG_SIZE" --seed "$SEED"
  "$PYTHON" -m vqvae.train --data "$DEMO_DIR/vqvae_decoder_images.lmdb" --save "$CKPT/vqvae-decoder" \
      --resume --init "$CKPT/vqvae" --decoder-only --img-size 64 --batch-size 32 --lr 6e-4 \
      --iters "$VQ_DECODER_ITERS" --log-interval 100 --save-interval 500 --keep-last 2 \
      --num-workers 1 "${DEVICE[@]}"
  say "VQ-VAE, all of it, on the same images ($VQ_WHOLE_ITERS iterations)"
  # the encoder and codebook never saw a whole 64 px scene above, and its small shapes got
  # codes made for big ones: trained whole on these images, held-out 64 px reconstructions
  # keep the right shape in 72% instead of 60% (new codes: the super-resolution GPT trains
  # on these; the base GPT on the fourth stage's below).
  "$PYTHON" -m vqvae.train --data "$DEMO_DIR/vqvae_decoder_images.lmdb" --save "$CKPT/vqvae-whole" \
      --resume --init "$CKPT/vqvae-decoder" --img-size 64 --batch-size 32 --lr 3e-4 \
      --iters "$VQ_WHOLE_ITERS" --dead-code-threshold 0.5 --log-interval 100 --save-interval 500 \
      --keep-last 2 --num-workers 1 "${DEVICE[@]}"
  "$PYTHON" -m training.export_release vqvae \
      "$CKPT/vqvae-whole/vqvae_$(cat "$CKPT/vqvae-whole/latest").pt" "$VQVAE"
fi
if want vqvae && [ ! -f "$VQVAE_BASE" ]; then
  say "base model's VQ-VAE ($VQ_BASE_ITERS iterations on whole $IMG_SIZE px renders)"
  # the VQ-VAE above serves 128 and 256 px too; trained on whole IMG_SIZE scenes alone
  # from its weights, held-out 64 px reconstructions keep the right shape in 82% (one
  # object) and 85% (two) instead of 72% and 56%: small stars and crosses get codes of
  # their own. The base GPT uses it; the super-resolution model keeps the one above.
  [ -d "$DEMO_DIR/vqvae_base_images.lmdb" ] || "$PYTHON" -m demo.make_data vqvae-images \
      --out "$DEMO_DIR/vqvae_base_images.lmdb" --num "$VQ_BASE_IMAGES" --img-size "$IMG_SIZE" --whole-only \
      --seed "$SEED"
  "$PYTHON" -m vqvae.train --data "$DEMO_DIR/vqvae_base_images.lmdb" --save "$CKPT/vqvae-base" \
      --resume --init "$VQVAE" --img-size "$IMG_SIZE" --batch-size 32 --lr 3e-4 \
      --iters "$VQ_BASE_ITERS" --dead-code-threshold 0.5 --log-interval 100 --save-interval 500 \
      --keep-last 2 --num-workers 1 "${DEVICE[@]}"
  "$PYTHON" -m training.export_release vqvae \
      "$CKPT/vqvae-base/vqvae_$(cat "$CKPT/vqvae-base/latest").pt" "$VQVAE_BASE"
fi

# kept() says when a data step finds its rows already built (they are not rebuilt with new sizes)
kept() { say "keeping $1 (delete it to rebuild it with $2)"; }
if want gpt-data && [ -d "$DEMO_DIR/gpt.lmdb" ]; then kept "$DEMO_DIR/gpt.lmdb" "GPT_ROWS=$GPT_ROWS"; fi
if want gpt-data && [ ! -d "$DEMO_DIR/gpt.lmdb" ]; then
  say "GPT rows ($GPT_ROWS, text->image and image->text, English and Chinese)"
  "$PYTHON" -m demo.make_data gpt --out "$DEMO_DIR/gpt.lmdb" --num "$GPT_ROWS" --seed "$SEED" \
      --img-size "$IMG_SIZE" --vqvae "$VQVAE_BASE" --txt-tokenizer-path "$TOKENIZER.model"
fi

# train_gpt <name> <data> <iterations> <batch> <positions> <layers> <hidden> <heads> <lr> [flags...]
# (DROPOUT and WEIGHT_DECAY, when set, replace no dropout and weight decay 0.01)
train_gpt() {
  local name=$1 data=$2 iters=$3 batch=$4 positions=$5 layers=$6 hidden=$7 heads=$8 lr=$9
  shift 9
  mkdir -p "$CKPT/$name"  # a fixed folder: --load of an empty folder starts from scratch
  local load=(--load "$CKPT/$name")  # resume this run when it has a checkpoint
  if [ ! -f "$CKPT/$name/latest_checkpointed_iteration.txt" ] && [ -n "${INIT:-}" ]; then
    # first run from given weights: weights only, iteration 0. The run is named after the
    # --load folder, so the weights are reached through a link named like this run.
    mkdir -p "$DEMO_DIR/init"
    ln -sfn "$(realpath "$INIT")" "$DEMO_DIR/init/$name"
    load=(--load "$DEMO_DIR/init/$name" --finetune)
  fi
  "$PYTHON" pretrain_gpt2.py --experiment-name "$name" "${load[@]}" --save "$CKPT" \
      --train-data "$data" --dataset-type TokenizedDataset --split 995,5,0 \
      --img-tokenizer-path "${TRAIN_VQVAE:-$VQVAE_BASE}" --txt-tokenizer-path "$TOKENIZER.model" \
      --img-size "${TRAIN_IMG_SIZE:-$IMG_SIZE}" \
      --num-layers "$layers" --hidden-size "$hidden" --num-attention-heads "$heads" \
      --max-position-embeddings "$positions" --make-vocab-size-divisible-by 64 --max-memory-length 0 \
      --batch-size "$batch" --train-iters "$iters" --lr "$lr" --lr-decay-style cosine --warmup 0.02 \
      --weight-decay "${WEIGHT_DECAY:-0.01}" --clip-grad 1.0 \
      --hidden-dropout "${DROPOUT:-0}" --attention-dropout "${DROPOUT:-0}" \
      --save-interval 500 --eval-interval 1000 --eval-iters 10 --log-interval 100 \
      --resume-dataloader --num-workers 1 --seed "$SEED" --summary-dir "$CKPT/tensorboard" \
      "${DEVICE[@]}" "${PRECISION[@]}" "$@"
}

if want gpt; then
  say "CogView GPT ($GPT_ITERS iterations of $GPT_BATCH)"
  # Dropout and weight decay 0.1: the shipped GPT without them drew a (colour, shape) pair it
  # never saw as a shape it had seen with that colour; fine-tuned with them, held-out shapes
  # went from 55 to 66% and two-object scenes from 65 to 73% (three draws; bench/RESULTS.md).
  INIT=$GPT_INIT DROPOUT=$GPT_DROPOUT WEIGHT_DECAY=$GPT_WEIGHT_DECAY train_gpt cogview-demo "$DEMO_DIR/gpt.lmdb" "$GPT_ITERS" "$GPT_BATCH" "$GPT_POSITIONS" 8 256 8 "$GPT_LR"
fi

if want sr-data && [ -d "$DEMO_DIR/sr.lmdb" ]; then
  kept "$DEMO_DIR/sr.lmdb" "SR_ROWS=$SR_ROWS SR_TEXT_LENGTH=$SR_TEXT_LENGTH SR_LOW_LEVEL=$SR_LOW_LEVEL"
fi
if want sr-data && [ ! -d "$DEMO_DIR/sr.lmdb" ]; then
  say "super-resolution rows ($SR_ROWS)"
  # magnify's windows (SR_IMG_SIZE -> twice) and, SR_LOW_LEVEL of them, whole images at half
  # SR_IMG_SIZE -> SR_IMG_SIZE: the low-level super-resolution query, which a model trained on
  # windows alone answers with noise (bench/RESULTS.md, "Low-level super-resolution rows")
  "$PYTHON" -m demo.make_data sr --out "$DEMO_DIR/sr.lmdb" --num "$SR_ROWS" --seed "$SEED" \
      --img-size "$SR_IMG_SIZE" --vqvae "$VQVAE" --txt-tokenizer-path "$TOKENIZER.model" \
      --sr-text-length "$SR_TEXT_LENGTH" --low-level-fraction "$SR_LOW_LEVEL"
fi

if want sr; then
  say "super-resolution GPT ($SR_ITERS iterations of $SR_BATCH)"
  # Rows are 329 + SR_TEXT_LENGTH tokens (349). Captions padded to SR_TEXT_LENGTH put the
  # low-res codes at fixed positions, and positions count on through the row (no restart at
  # [ROI2]: model_config.json records it, so generation numbers them the same way), so
  # --magnify-position-init can start each high-res code's position row next to the row of
  # the low-res code it magnifies (arch/magnify_positions.py). From SR_INIT weights with
  # another position table, everything but the table is kept.
  INIT=$SR_INIT TRAIN_IMG_SIZE=$SR_IMG_SIZE TRAIN_VQVAE=$VQVAE train_gpt cogview-demo-sr "$DEMO_DIR/sr.lmdb" "$SR_ITERS" "$SR_BATCH" "$SR_POSITIONS" 6 192 6 "$SR_LR" \
      --magnify-position-init --sr-text-length "$SR_TEXT_LENGTH"
fi

if want export; then
  say "export to $PRETRAINED_DIR/cogview"
  for name in cogview-demo cogview-demo-sr; do
    if [ -f "$CKPT/$name/latest_checkpointed_iteration.txt" ]; then
      # the both-directions model captions with guidance and ranks them by log p(image | caption)
      # + CAPTION_RERANK_WEIGHT log p(caption | image), and draws images with guidance among its
      # IMAGE_GUIDANCE_TOP_K most likely codes (bench/RESULTS.md, "Caption guidance and ranking",
      # "Guidance for text2image")
      img_tokenizer=$VQVAE_BASE
      extra=(--guidance-scale "image2text=$CAPTION_GUIDANCE" --caption-rerank
             --caption-rerank-weight "$CAPTION_RERANK_WEIGHT"
             --guidance-scale "text2image=$IMAGE_GUIDANCE" --guidance-top-k "text2image=$IMAGE_GUIDANCE_TOP_K")
      [ "$name" = cogview-demo ] || { img_tokenizer=$VQVAE; extra=(); }
      rm -rf "$PRETRAINED_DIR/cogview/$name"
      "$PYTHON" -m training.export_release gpt "$CKPT/$name" "$PRETRAINED_DIR/cogview/$name" --dtype float16 \
          --img-tokenizer-path "$img_tokenizer" --txt-tokenizer-path "$TOKENIZER.model" "${extra[@]}"
    fi
  done
fi
say "done; try ./scripts/text2image.sh, then ./scripts/eval_demo.sh"
