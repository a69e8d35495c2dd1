#!/usr/bin/env bash
# The realm-fairseq demo: the REALM pipeline on the data shipped in examples/realm/data, on CPU.
#
#   bash examples/realm/demo.sh [--quick] [--out DIR]
#
#   --quick    salient spans from the date regex instead of spaCy NER (seconds instead of minutes)
#   --out DIR  where everything is written (default: demo-output); rerunning replaces it
#
# Step 1 builds the block corpus REALM retrieves from (the 106 Wikipedia articles, the SQuAD v1.1 dev
# paragraphs and the SQuADShifts paragraphs) and prints its statistics. The index, REALM pre-training,
# open-domain QA fine-tuning and answering steps join this script as they land.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data="$here/data"
out=demo-output
spans=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) spans=regex ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
workers=$(python -c 'import os; print(min(8, len(os.sched_getaffinity(0))))')

echo "== step 1: prepare the block corpus -> $out/corpus"
realm-prepare-corpus \
  "$data/enwiki-sample-articles.jsonl.gz" \
  "$data/squad-v1.1-dev.json.gz" \
  "$data/squadshifts-new-wiki-v1.0.json.gz" \
  --vocab "$data/bert-base-uncased-vocab.txt" \
  --out "$out/corpus" --force --workers "$workers" --salient-spans "$spans"
realm-corpus-stats "$out/corpus"
