#!/usr/bin/env bash
# REALM pre-training with the demo's settings (demo.sh, step 3), on 2 CPU cores.
#
#   bash examples/realm/pretrain.sh CORPUS WEIGHTS SAVE_DIR [realm-train options...]
#
# Every tower (query embedder, document embedder, reader) starts from the encoder WEIGHTS (realm-convert-hf).
# The options after SAVE_DIR come last, so they add to these settings or replace them: --index INDEX and
# --refresh-* to retrieve (step 3), --retrieval-topk 0 for the reader alone (step 3b), --max-update, ...
# The settings, and why:
#   --retrieval-topk 4, batch 4   blocks retrieved per masked sentence (and the null document): the reader
#                                 reads 5 blocks for each, so memory and time grow with batch x (k + 1)
#   --retriever-warmup-updates 20 MiniLM has no masked-LM head, so the reader's starts random and p(z|x) could
#                                 only follow noise: the retriever stays as MiniLM made it for 20 updates
#   --optimizer realm_adam --retriever-lr-scale 0.1
#                                 then it learns at a tenth of the reader's rate: at one rate the 20 updates
#                                 after the warm-up cost 13.5 points of zero-shot recall@5 on the SQuAD test
#                                 split (85.5 -> 72.0); at a tenth it stays at 85.5
#   --lr 5e-5, 40 updates         about 3 minutes on 2 cores; validation on 8 batches every 10 updates
#   --attention-dropout 0         on CPU torch's attention with dropout takes a slower path
#                                 (bench/attention_dropout.py)
set -euo pipefail
usage() { sed -n '2,/^set /p' "$0" | sed -n 's/^# \{0,1\}//p'; }
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
[ $# -ge 3 ] || { usage >&2; exit 2; }
corpus=$1 weights=$2 save=$3
shift 3
realm-train "$corpus" --task realm_pretrain --criterion realm_mlm --arch realm_minilm --encoder-init "$weights" \
  --retrieval-topk 4 --retriever-warmup-updates 20 --attention-dropout 0 \
  --optimizer realm_adam --retriever-lr-scale 0.1 --lr 5e-5 --lr-scheduler fixed --batch-size 4 --max-update 40 \
  --valid-percent 2 --max-valid-steps 8 --validate-interval-updates 10 \
  --cpu --num-workers 0 --required-batch-size-multiple 1 --seed 1 \
  --save-dir "$save" --no-epoch-checkpoints --log-format simple --log-interval 2 --no-progress-bar "$@"
