#!/usr/bin/env bash
# Set up a bare GPU machine that has python3 with CUDA torch but none of our other packages, then run
# the GPU checks named as arguments, each logged to $OUT (or ./gpu-out) as it runs.
#
#   bash bench/on_gpu.sh [install] [scale] [embed] [pretrain]
#
# install:  pip-installs the wheels in .whl/ (fairseq, faiss-cpu, hydra, ...; fetched beforehand with
#           `pip download --python-version 3.12 ...`, see bench/gpu-notes.md) and this checkout, offline.
# scale:    bench/scale.py at 100k, 1M and 13,353,718 vectors on the GPU (torch search) and the CPU.
# embed:    bench/embed_corpus.py at realm_base bf16: fairseq's attention against the SDPA path.
# pretrain: a short realm_pretrain run (realm_tiny, random weights) retrieving on the GPU.
set -uo pipefail
OUT=${OUT:-gpu-out}
data=examples/realm/data
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, report the exit status and time
  local name=$1; shift
  local start=$SECONDS
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

install() {
  python3 -m pip install -q --no-index --no-deps --no-compile "${WHEELS:-.whl}"/*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation . \
    && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    && python3 -c "import torch, fairseq, faiss; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'fairseq', fairseq.__version__, 'faiss', faiss.__version__)"
}

pretrain() {  # corpus (regex salient spans) -> realm_tiny index -> 30 updates retrieving on the GPU
  local work=/tmp/realm-gpu
  rm -rf "$work" && mkdir -p "$work"
  realm-prepare-corpus examples/realm/data/wikipedia_articles.jsonl --vocab examples/realm/data/bert-base-uncased-vocab.txt \
      --out "$work/corpus" --salient-spans regex --block-size 128 --workers 8 \
    && realm-build-index "$work/corpus" --arch realm_tiny --out "$work/index" --device cuda \
    && realm-train "$work/corpus" --task realm_pretrain --index "$work/index" --arch realm_tiny \
      --criterion realm_mlm --optimizer adam --lr 1e-4 --batch-size 8 --max-update 30 --log-interval 5 \
      --retrieval-topk 8 --device-id 0 --save-dir "$work/ckpt" --no-epoch-checkpoints --bf16
}

for what in "$@"; do
  case $what in
    install) step install install ;;
    scale) step scale timeout "${SCALE_S:-330}" python3 bench/scale.py --device cuda --sizes ${SIZES:-13353718 1000000 100000} \
             --out "$OUT/scale.json" ;;
    embed) step embed timeout "${EMBED_S:-150}" python3 bench/embed_corpus.py --device cuda --arch realm_base --dtype bf16 \
             --blocks 0 --max-tokens 65536 --repeat 2 --weights-in-dtype --inputs $data/enwiki-sample-articles.jsonl.gz \
             $data/squad-v1.1-dev.json.gz $data/squadshifts-new-wiki-v1.0.json.gz ;;
    pretrain) step pretrain pretrain ;;
    *) echo "unknown step $what (install, scale, embed, pretrain)"; exit 2 ;;
  esac
done
