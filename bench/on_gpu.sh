#!/usr/bin/env bash
# Set up a bare GPU machine that has python3 with CUDA torch but none of our other packages, then run
# the GPU checks named as arguments, each logged to $OUT (or ./gpu-out) as it runs.
#
#   bash bench/on_gpu.sh wheels                                  (here, with the network: fills .whl/)
#   bash bench/on_gpu.sh [install] [scale] [embed] [ict] [activations] [pretrain]   (there, through the device tool)
#
# wheels:   downloads the wheels `install` needs for the GPU machine's Python (PY, default 3.12), at the
#           versions constraints.txt pins, into .whl/ (about 39 MB: carry it, `run` carries at most 64 MiB);
#           antlr4 has no wheel on PyPI and is built.
# install:  pip-installs the wheels in .whl/ (fairseq, faiss-cpu, hydra, ...; fetched beforehand with
#           `pip download --python-version 3.12 ...`, see bench/gpu-notes.md) and this checkout, offline.
# scale:    bench/scale.py at 100k, 1M and 13,353,718 vectors on the GPU (torch search) and the CPU (faiss
#           flat16, the default type of a version; TYPES="flat16 flat ..." adds others).
# embed:    bench/embed_corpus.py at realm_base bf16: fairseq's attention against the SDPA path, also
#           with the weights in bf16 and under torch.compile.
# ict:      bench/ict_step.py: an Inverse Cloze Task step at realm_base bf16, 64 pseudo-queries (ORQA's batch
#           of 4,096 on 64 GPUs), against query and block embedding timed alone.
# activations: bench/activation_memory.py: peak GPU memory and time of a REALM pre-training step at realm_base
#           bf16, batch 8, k=8 (the paper's 512 on 64 accelerators), with --checkpoint-activations against without.
# pretrain: a short realm_pretrain run (realm_tiny) retrieving on the GPU, refreshed every 20 updates (fails
#           unless a refreshed version is swapped in during training), then the GPU tests.
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

wheels() {  # on this machine, before the GPU run: the GPU machine has no network
  local dir=${WHEELS:-.whl}
  rm -rf "$dir" && mkdir -p "$dir" \
    && python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PY:-3.12}" \
      --platform manylinux_2_28_x86_64 -d "$dir" -c constraints.txt ve-fairseq faiss-cpu hydra-core omegaconf \
      bitarray submitit \
    && python3 -m pip wheel -q --no-deps -w "$dir" -c constraints.txt antlr4-python3-runtime \
    && du -sh "$dir" && ls "$dir"
}

install() {
  python3 -m pip install -q --no-index --no-deps --no-compile "${WHEELS:-.whl}"/*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation . \
    && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    && python3 -c "import torch, fairseq, faiss; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'fairseq', fairseq.__version__, 'faiss', faiss.__version__)"
}

pretrain() {  # corpus -> realm_tiny checkpoint -> its index -> 120 updates retrieving on the GPU, refreshed every 20
  local work=/tmp/realm-gpu common dev=${DEVICE:-cuda}  # DEVICE=cpu: the same steps on the CPU, to try them
  set -o pipefail  # realm-train's status, not tee's
  rm -rf "$work" && mkdir -p "$work"
  common=(--task realm_pretrain --criterion realm_mlm --arch realm_tiny --optimizer adam --lr 1e-4
          --lr-scheduler fixed --batch-size 8 --num-workers 0 --required-batch-size-multiple 1 --seed 1
          --no-epoch-checkpoints --log-format simple --log-interval 5 --no-progress-bar --bf16 --disable-validation)
  [ "$dev" = cpu ] && common+=(--cpu)
  realm-prepare-corpus $data/enwiki-sample-articles.jsonl.gz --vocab $data/bert-base-uncased-vocab.txt \
      --out "$work/corpus" --salient-spans regex --block-size 128 --workers 8 \
    && realm-train "$work/corpus" "${common[@]}" --retrieval-topk 0 --max-update 1 --save-dir "$work/init" \
    && realm-build-index --corpus "$work/corpus" --checkpoint "$work/init/checkpoint_last.pt" --out "$work/index" \
      --device "$dev" --dtype bf16 \
    && realm-train "$work/corpus" "${common[@]}" --index "$work/index" --retrieval-topk 8 --max-update 120 \
      --retrieval-devices auto --retrieval-precision fp16 --refresh-interval-updates 20 --refresh-launcher local \
      --refresh-at-end wait \
      --save-dir "$work/pretrain" 2>&1 | tee "$work/pretrain.log" \
    && grep -q "index refresh: swapped in" "$work/pretrain.log" \
    && python3 -m pytest -q -p no:cacheprovider -o addopts=-ra tests/test_torch_search.py \
      tests/test_retrieval_placement.py \
      tests/test_realm_pretrain.py::test_retrieval_precision_reaches_the_search_and_every_refreshed_version \
      tests/test_realm_pretrain.py::test_a_swapped_out_version_is_let_go \
      tests/test_realm_adam.py::test_fp16_parameters_keep_their_tags_unless_flattened
      # in one process: pytest.ini's -n 2 needs pytest-xdist, not installed here
}

for what in "$@"; do
  case $what in
    wheels) step wheels wheels ;;
    install) step install install ;;
    scale) step scale timeout "${SCALE_S:-330}" python3 bench/scale.py --device cuda --sizes ${SIZES:-13353718 1000000 100000} \
             --types ${TYPES:-flat16} --repeat "${REPEAT:-5}" --out "$OUT/scale.json" ;;
    embed) step embed timeout "${EMBED_S:-150}" python3 bench/embed_corpus.py --device cuda --arch realm_base --dtype bf16 \
             --blocks 0 --max-tokens 65536 --repeat 2 --weights-in-dtype --compile --inputs $data/enwiki-sample-articles.jsonl.gz \
             $data/squad-v1.1-dev.json.gz $data/squadshifts-new-wiki-v1.0.json.gz ;;
    ict) step ict timeout "${ICT_S:-150}" python3 bench/ict_step.py --device cuda --arch realm_base --dtype bf16 \
           --batch-size 64 --steps 10 ;;
    activations) step activations timeout "${ACTIVATIONS_S:-150}" python3 bench/activation_memory.py --device cuda \
                   --arch realm_base --dtype bf16 --batch-size 8 --topk 8 --steps 5 ;;
    pretrain) step pretrain timeout "${PRETRAIN_S:-300}" bash -c "$(declare -f pretrain); data=$data; pretrain" ;;
    *) echo "unknown step $what (wheels, install, scale, embed, ict, activations, pretrain)"; exit 2 ;;
  esac
done
