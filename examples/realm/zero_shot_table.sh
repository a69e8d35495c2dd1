#!/usr/bin/env bash
# Zero-shot retrieval on the shipped data, REALM's Table 2 metric: recall@1/5/20/100 of BM25, MiniLM, an ICT
# checkpoint and the checkpoint after REALM pre-training, over the corpus of the full demo.
#
#   bash examples/realm/zero_shot_table.sh [--out DIR] [--ict-updates N]
#
#   --out DIR          the output of a full `bash examples/realm/demo.sh --out DIR` (default: demo-output);
#                      results go to DIR/zero-shot
#   --ict-updates N    ICT updates of 16 from MiniLM for the ICT row (default: 40)
#
# Question sets: the demo's SQuAD v1.1 dev test split (articles no fine-tuning saw), and the questions of a
# fifth of the SQuADShifts new-wiki articles (out of domain: newer articles, other annotators), both answered
# from DIR/corpus (106 Wikipedia articles, the SQuAD dev and the SQuADShifts paragraphs). The ICT and the
# pre-trained checkpoints are measured over the corpus embedded by their own final document embedder, MiniLM
# over the demo's index v1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data="$here/data"
out=demo-output
ict_updates=40
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift ;;
    --ict-updates) ict_updates=$2; shift ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0 ;;
    *) echo "zero_shot_table.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
for need in corpus index/v1 minilm.pt pretrain/checkpoint_last.pt questions/test.jsonl; do
  [ -e "$out/$need" ] || { echo "zero_shot_table.sh: $out/$need is missing: run bash examples/realm/demo.sh --out $out" >&2; exit 1; }
done
z=$out/zero-shot
mkdir -p "$z"
step() { printf '== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step "questions: the SQuAD v1.1 dev test split, a fifth of SQuADShifts new-wiki"
mkdir -p "$z/squad"
cp "$out/questions/test.jsonl" "$z/squad/test.jsonl"
realm-squad-to-questions "$data/squadshifts-new-wiki-v1.0.json.gz" --out "$z/shifts" --split test=20,rest=80

if [ -f "$z/ict/checkpoint_last.pt" ]; then
  step "ICT: $z/ict/checkpoint_last.pt is there already (remove it to train again)"
else
  step "ICT from MiniLM, $ict_updates updates of 16 -> $z/ict"
  realm-train "$out/corpus" --task realm_ict --criterion realm_ict --arch realm_minilm --encoder-init "$out/minilm.pt" \
    --optimizer adam --lr 2e-5 --lr-scheduler fixed --batch-size 16 --max-update "$ict_updates" \
    --cpu --num-workers 0 --required-batch-size-multiple 1 --seed 1 --disable-validation \
    --save-dir "$z/ict" --no-epoch-checkpoints --log-format simple --log-interval 25 --no-progress-bar \
    2>&1 | grep -E "train_inner|done training"
fi

measure() {  # NAME OPTIONS...: one retriever on both question sets
  local name=$1; shift
  for set in squad shifts; do
    step "$name on $set"
    realm-evaluate --retrieval-only --questions "$z/$set/test.jsonl" --corpus "$out/corpus" --no-progress "$@" \
      > "$z/$name.$set.json"
  done
}
measure bm25 --bm25
measure minilm --hf "$out/minilm.pt" --index "$out/index" --index-version 1
for name in ict realm; do  # each checkpoint's own document embedder over the whole corpus, once for both sets
  checkpoint=$z/ict/checkpoint_last.pt
  [ "$name" = realm ] && checkpoint=$out/pretrain/checkpoint_last.pt
  step "embed the corpus with the $name checkpoint -> $z/$name-index"
  rm -rf "$z/$name-index"
  realm-build-index --corpus "$out/corpus" --checkpoint "$checkpoint" --out "$z/$name-index" --no-progress
  measure "$name" --checkpoint "$checkpoint" --index "$z/$name-index"
done

step "results"
python - "$z" <<'PY'
import json, sys
z = sys.argv[1]
rows = [("BM25 (bm25s, k1=0.9, b=0.4)", "bm25"), ("MiniLM (all-MiniLM-L6-v2), cosine", "minilm"),
        ("ICT from MiniLM", "ict"), ("after REALM pre-training (demo step 3)", "realm")]
ks = (1, 5, 20, 100)
for title, qset in (("SQuAD v1.1 dev, test split", "squad"), ("SQuADShifts new-wiki (out of domain)", "shifts")):
    first = json.load(open(f"{z}/bm25.{qset}.json"))
    print(f"\n{title}: {first['questions']} questions, {first['blocks']} blocks\n")
    print("| retriever | " + " | ".join(f"recall@{k}" for k in ks) + " | gold paragraph@5 |")
    print("|---|" + "---|" * (len(ks) + 1))
    for name, key in rows:
        m = json.load(open(f"{z}/{key}.{qset}.json"))
        print(f"| {name} | " + " | ".join(f"{m[f'recall@{k}']:.1f}" for k in ks) + f" | {m['gold_recall@5']:.1f} |")
PY
