"""MIPS at REALM's scale: build, disk, host memory, search and version swap, up to 13,353,718 blocks.

    python bench/scale.py [--sizes 100000 1000000 13353718] [--device auto|cpu|cuda] [--types flat ivf_flat ...]
                          [--queries 8 64] [--k 8] [--exclude 1] [--repeat 5] [--precisions fp32 fp16]
                          [--build-limits ivf_flat=1000000 ivf_pq=1000000 hnsw=100000] [--ranks-per-node 8]
                          [--merge-shards 16] [--step-ms MS] [--step-arch ARCH] [--workdir DIR]
                          [--out results.json]

REALM retrieves from 13,353,718 blocks of 128 dimensions (section 3.2 "MIPS", appendix A). For each size
N, synthetic standard normal vectors (float16, as an index version stores them) are committed twice to an
IndexStore (v1 and v2, as a refresh does), then measured, each part in a process of its own so that sizes do
not pollute each other:

- commit: seconds to commit v1 and v2 (embeddings and an index of ``--commit-type``, by default the type
  a version gets, checksummed and flushed to disk), and their bytes. Where the index file holds the rows
  (``flat16``), the baseline in the same run: the seconds a separate ``embeddings.npy`` beside it (as
  versions had before) adds, written, hashed and flushed once after the commits;
- merge: v1's embeddings written as ``--merge-shards`` shards and merged into a version, as a sharded
  build's merge job does (seconds, and the peak private memory, RssAnon sampled every 10 ms); the baseline
  in the same process: the same shards concatenated in memory first and committed, as merges were before;
- build: ``MipsIndex.build`` of each faiss type in ``--types`` (seconds) and the bytes of its file; types
  above their ``--build-limits`` size are skipped (defaults: ivf_flat and ivf_pq up to 1M, hnsw up to 100k:
  their builds take minutes at 13.35M; ``TYPE=0`` removes a limit);
- serve: a process that loads the index as a training rank does (faiss: ``MipsIndex.load``; torch:
  ``TorchMipsSearch.from_store`` on the CPU and, with ``--device cuda``, the GPU in each of ``--precisions``;
  faiss-gpu ``flat`` when faiss has GPUs), then measures its host memory from /proc/self/status against a
  baseline taken after a warm-up search (RssAnon: private to the rank; RssFile: page cache a node's ranks
  share, counted once), the median search ms of ``--repeat`` batches of each ``--queries`` size (k =
  ``--k`` plus ``--exclude`` excluded ids, as pre-training excludes the source block), and the version swap:
  loading v2 while v1 is in use (seconds, and the peak host memory it adds); for torch, also the inner
  products alone (every chunk multiplied, nothing selected), so the rest is selection and merging;
- the step: a realm_base bf16 training step at batch 8 measured by bench/pretrain_step.py in the same run
  on a GPU (``--step-arch`` realm_tiny fp32 on a CPU, labelled), or ``--step-ms`` when given.

Goals: at 13,353,718 on one GPU, search of 8 queries <= 5% of the step; host memory of the index on a
node of ``--ranks-per-node`` ranks, ranks x RssAnon + RssFile, <= one float16 copy (N x d x 2 bytes).
At 13.35M an H200 machine (16 cores, 128 GiB) runs the defaults in about 5 minutes; ``--sizes 20000
--device cpu`` is a smoke test of under a minute on 2 cores. ``--out`` writes every measurement as JSON.
"""
import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from goals import goal_line, info_line  # noqa: E402  (bench/goals.py, this script's directory)

PAPER_N = 13_353_718
DIM = 128
FAISS_TYPES = ("flat16", "flat", "ivf_flat", "ivf_pq", "hnsw", "sq8")
BUILD_LIMITS = {"ivf_flat": 1_000_000, "ivf_pq": 1_000_000, "hnsw": 100_000}
GEN_ROWS = 1 << 20  # rows generated at a time
MIB = float(1 << 20)
STEP_GOAL = 0.05


# ---------------------------------------------------------------- memory and timing
def proc_status() -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in bytes (/proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[name] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_private(fn) -> dict:
    """Seconds of ``fn()`` and the most private memory (RssAnon) it added, sampled every 10 ms by a thread
    (the plateau that a long native call keeps is seen even where that call holds the GIL)."""
    base = proc_status()["RssAnon"]
    peak, done = [base], threading.Event()

    def sample():
        while not done.wait(0.01):
            peak[0] = max(peak[0], proc_status()["RssAnon"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    return {"s": seconds, "peak_anon": max(peak[0], proc_status()["RssAnon"]) - base}


def memory_since(base: dict) -> dict:
    """Bytes added since ``base``: anon, file and the peak RSS (VmHWM, since the last reset)."""
    now = proc_status()
    return {"anon": now["RssAnon"] - base["RssAnon"], "file": now["RssFile"] - base["RssFile"],
            "peak": now["VmHWM"] - base["VmRSS"]}


def median_ms(fn, repeat: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def queries_of(sizes, k_exclude: int, n: int, seed: int = 1):
    """{size: (queries (size, DIM) float32, exclude (size, k_exclude) int64)}."""
    rng = np.random.default_rng(seed)
    return {q: (rng.standard_normal((q, DIM), dtype=np.float32), rng.integers(0, n, (q, k_exclude)))
            for q in sizes}


# ---------------------------------------------------------------- child processes
def light_package() -> None:
    """Let a child import realm_fairseq.retrieval without the package's __init__, which imports fairseq to
    register the plugin (seconds a process, ten processes a size); retrieval needs none of it."""
    if "realm_fairseq" not in sys.modules:
        package = types.ModuleType("realm_fairseq")
        package.__path__ = [os.path.join(HERE, "..", "realm_fairseq")]
        sys.modules["realm_fairseq"] = package


def child_make(spec: dict) -> dict:
    """Commit v1 and v2 of N synthetic vectors (float16) to the IndexStore at spec['store'], with the index
    type spec['commit_type'] names (else a version's default): seconds to commit, bytes of the files."""
    from realm_fairseq.retrieval.versions import IndexStore, embeddings_file

    store, n, out = IndexStore(spec["store"]), spec["n"], {}
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        emb = np.empty((n, DIM), dtype=np.float16)
        for s in range(0, n, GEN_ROWS):  # (GEN_ROWS, DIM) float32 at a time
            emb[s : s + GEN_ROWS] = rng.standard_normal((min(GEN_ROWS, n - s), DIM), dtype=np.float32)
        start = time.perf_counter()
        version = store.commit(emb, f"synthetic-{n}", {"seed": seed}, **spec["commit_type"])
        out[f"commit_s_v{version}"] = time.perf_counter() - start
        if seed == 1 and embeddings_file(store.manifest(version)) != "embeddings.npy":
            out["separate_embeddings_s"] = separate_embeddings_s(emb, store.root)
        del emb
        gc.collect()
    manifest = store.manifest(1)
    out["files"] = {name: record["bytes"] for name, record in manifest["files"].items()}
    out["embeddings_file"] = embeddings_file(manifest)  # what a torch search reads its rows from
    out["index_type"] = manifest["index_type"]
    return out


def separate_embeddings_s(emb: np.ndarray, directory: str) -> float:
    """Seconds to write ``emb`` as an .npy file, hashed (sha256) while written and flushed to disk, as a
    version kept it beside its index before a flat16 index held the rows; the file is removed."""
    import hashlib

    path = os.path.join(directory, "separate-embeddings.npy")
    start = time.perf_counter()
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        class Hashing:  # numpy writes to it in chunks: each is hashed and written
            def write(self, data):
                digest.update(data)
                return f.write(data)
        np.save(Hashing(), emb)
        f.flush()
        os.fsync(f.fileno())
    digest.hexdigest()
    seconds = time.perf_counter() - start
    os.remove(path)
    return seconds


def child_merge(spec: dict) -> dict:
    """Write v1's embeddings as spec['shards'] shards to a second store and merge them into a version, as a
    sharded build's merge job does; first, the baseline: the same shards concatenated in memory and
    committed. Seconds and peak private memory of each (:func:`peak_private`)."""
    from realm_fairseq.retrieval.versions import IndexStore, shard_range

    emb, num = IndexStore(spec["store"]).embeddings(1), spec["shards"]
    store = IndexStore(spec["merge_store"])
    for i in range(num):
        store.write_shard("bench", i, num, emb[slice(*shard_range(len(emb), i, num))])
    shards = [np.load(store.shard_path("bench", i, num), mmap_mode="r") for i in range(num)]
    out = {"concatenated": peak_private(lambda: store.commit(np.concatenate(shards), "bench", {}))}
    del shards
    gc.collect()
    out["merged"] = peak_private(lambda: store.merge_shards("bench", num, "bench", {}))
    out["shards"] = num
    shutil.rmtree(spec["merge_store"])
    return out


def child_build(spec: dict) -> dict:
    """Build a faiss index of type spec['type'] over v1's embeddings; save it to spec['path']."""
    from realm_fairseq.retrieval.mips import MipsIndex
    from realm_fairseq.retrieval.versions import IndexStore

    emb = IndexStore(spec["store"]).embeddings(1)
    start = time.perf_counter()
    index = MipsIndex.build(emb, spec["type"])
    build_s = time.perf_counter() - start
    index.save(spec["path"])
    return {"build_s": build_s, "bytes": os.path.getsize(spec["path"]), "options": index.options}


def _faiss_searcher(spec: dict):
    """(warm-up, load v1, load v2) for a faiss index: on the CPU, or on GPUs through faiss-gpu."""
    from realm_fairseq.retrieval.mips import MipsIndex
    from realm_fairseq.retrieval.versions import IndexStore

    store, gpu = IndexStore(spec["store"]), spec["kind"] == "faiss-gpu"

    def load(version):
        if spec["type"] == spec["committed"]:  # a committed version, as a rank loads it (checksums included)
            index = store.load(version)[0]
        else:  # other types exist for v1 only (built by child_build)
            index = MipsIndex.load(spec["path"], spec["type"])
        return index.to_gpu() if gpu else index

    warm = MipsIndex.build(np.random.default_rng(0).standard_normal((4096, DIM), dtype=np.float32), "flat")
    warm = warm.to_gpu() if gpu else warm
    return warm, load


def _torch_searcher(spec: dict):
    """(warm-up, load) for TorchMipsSearch on spec['device'] with spec['precision']."""
    import torch

    from realm_fairseq.retrieval.torch_search import TorchMipsSearch
    from realm_fairseq.retrieval.versions import IndexStore

    store = IndexStore(spec["store"])
    kw = dict(devices=spec["device"], precision=spec["precision"])
    warm = TorchMipsSearch.from_array(np.random.default_rng(0).standard_normal((4096, DIM), dtype=np.float32)
                                      .astype(np.float16), **kw)

    def load(version):
        search = TorchMipsSearch.from_store(store, version, **kw)
        if spec["device"].startswith("cuda"):
            torch.cuda.synchronize()
        return search

    return warm, load


def search_ms(index, batches: dict, k: int, repeat: int) -> dict:
    """{batch size: median ms of searching that many queries}."""
    return {str(q): median_ms(lambda: index.search(queries, k, exclude=exclude), repeat)
            for q, (queries, exclude) in batches.items()}


def products_ms(search, batches: dict, repeat: int) -> dict:
    """{batch size: median ms of a torch search's inner products alone}: every chunk of every shard multiplied
    as the search multiplies it, nothing selected or merged. What the search takes beyond this is top-k
    selection, merging and the copy of the results to the host."""
    import torch

    from realm_fairseq.retrieval.torch_search import chunks, scores

    def products(queries):
        for shard in search.shards:
            q = torch.from_numpy(queries).to(shard.device)  # (b, d) float32
            for _, rows in chunks(shard, len(q), search.precision, search.working_bytes):
                scores(q, rows, search.precision)  # (b, c)
            if shard.is_cuda:
                torch.cuda.synchronize(shard.device)

    return {str(q): median_ms(lambda: products(queries), repeat) for q, (queries, _) in batches.items()}


def child_serve(spec: dict) -> dict:
    """Load v1 as a rank does and measure memory, search ms per query batch, and the swap to v2."""
    make = _torch_searcher if spec["kind"] == "torch" else _faiss_searcher
    warm, load = make(spec)
    batches = queries_of(spec["queries"], spec["exclude"], spec["n"])
    for q, (queries, exclude) in batches.items():  # libraries and kernels loaded before the baseline
        warm.search(queries, spec["k"], exclude=exclude)
    del warm
    gc.collect()
    base = proc_status()
    reset_peak()
    start = time.perf_counter()
    index = load(1)
    out = {"load_s": time.perf_counter() - start, "loaded": memory_since(base)}
    out["search_ms"] = search_ms(index, batches, spec["k"], spec["repeat"])
    if spec["kind"] == "torch":
        out["products_ms"] = products_ms(index, batches, spec["repeat"])
    out["searched"] = memory_since(base)  # a CPU search reads every page: RssFile grows to a copy
    reset_peak()
    before_swap = proc_status()
    start = time.perf_counter()
    second = load(2)  # while v1 is in use
    out["swap_s"] = time.perf_counter() - start
    out["swap_peak"] = proc_status()["VmHWM"] - before_swap["VmRSS"]
    out.update(_gpu_memory(spec))
    del index, second
    return out


def _gpu_memory(spec: dict) -> dict:
    if not spec.get("device", "").startswith("cuda"):
        return {}
    import torch

    return {"gpu_peak_bytes": torch.cuda.max_memory_allocated(), "gpu_total_bytes":
            torch.cuda.get_device_properties(0).total_memory}


CHILDREN = {"make": child_make, "merge": child_merge, "build": child_build, "serve": child_serve}


def run_child(spec: dict, timeout: int) -> dict:
    """Run one measurement in a fresh process; its last stdout line is the JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the training step
def measure_step(args) -> dict:
    """A REALM training step (ms) from bench/pretrain_step.py, or ``--step-ms``."""
    if args.step_ms:
        return {"ms": args.step_ms, "what": "given (--step-ms)"}
    gpu = args.device == "cuda"
    arch = args.step_arch or ("realm_base" if gpu else "realm_tiny")
    dtype = "bf16" if gpu else "fp32"
    cmd = [sys.executable, os.path.join(HERE, "pretrain_step.py"), "--arch", arch, "--dtype", dtype,
           "--batch-size", "8", "--steps", str(args.step_steps), "--device", "cuda" if gpu else "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    found = re.search(r"\| REALM step \| ([0-9.]+) \|", proc.stdout)
    if not found:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ms": None, "what": f"{arch} {dtype} step failed: {tail}"}
    return {"ms": float(found.group(1)), "what": f"{arch} {dtype} batch 8, {'GPU' if gpu else 'CPU'}"}


# ---------------------------------------------------------------- the runs
def serve_specs(args, n: int, store: str, built: dict, committed: str) -> list:
    """What to serve at size ``n``: faiss types built, torch on the CPU (and GPU), faiss-gpu if present.
    ``committed`` is the index type of the committed versions."""
    common = dict(store=store, n=n, queries=args.queries, k=args.k, exclude=args.exclude, repeat=args.repeat,
                  committed=committed)
    specs = [dict(common, kind="faiss", type=t, path=built[t]["path"], label=f"faiss {t} (CPU)")
             for t in args.types if "path" in built.get(t, {})]  # built, not skipped or failed
    specs.append(dict(common, kind="torch", device="cpu", precision="fp32", label="torch fp32 (CPU)"))
    if args.device == "cuda":
        specs += [dict(common, kind="torch", device="cuda:0", precision=p, label=f"torch {p} (1 GPU)")
                  for p in args.precisions]
        if faiss_gpus() and "flat" in built:
            specs.append(dict(common, kind="faiss-gpu", type="flat", path=built["flat"]["path"],
                              label="faiss-gpu flat (all GPUs)"))
    return specs


def faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def run_size(args, n: int, root: str) -> dict:
    store = os.path.join(root, f"n{n}")
    commit_type = {"index_type": args.commit_type} if args.commit_type else {}  # else the versions' default
    made = run_child({"kind": "make", "store": store, "n": n, "commit_type": commit_type}, args.timeout)
    print(f"\nN = {n:,}: committed v1, v2 {json.dumps(made)}", file=sys.stderr, flush=True)
    if "error" in made:
        return {"n": n, "made": made, "built": {}, "served": []}
    if args.merge_shards:
        made["merge"] = run_child({"kind": "merge", "store": store, "shards": args.merge_shards,
                                   "merge_store": os.path.join(root, f"n{n}-merge")}, args.timeout)
        print(f"  merge {args.merge_shards} shards: {json.dumps(made['merge'])}", file=sys.stderr, flush=True)
    built = {}
    for t in args.types:
        limit = args.build_limits.get(t, 0)
        if limit and n > limit:
            built[t] = {"skipped": f"N > --build-limits {t}={limit}"}
            continue
        path = os.path.join(root, f"n{n}-{t}.faiss")
        built[t] = dict(run_child({"kind": "build", "store": store, "type": t, "path": path}, args.timeout), path=path)
        print(f"  build {t}: {json.dumps(built[t])}", file=sys.stderr, flush=True)
    served = []
    for spec in serve_specs(args, n, store, built, made["index_type"]):
        result = dict(run_child(spec, args.timeout), label=spec["label"], kind=spec["kind"])
        print(f"  serve {spec['label']}: {json.dumps(result)}", file=sys.stderr, flush=True)
        served.append(result)
    for t in built:  # only the committed versions are kept until the size is done
        if os.path.exists(os.path.join(root, f"n{n}-{t}.faiss")):
            os.remove(os.path.join(root, f"n{n}-{t}.faiss"))
    shutil.rmtree(store, ignore_errors=True)
    return {"n": n, "made": made, "built": built, "served": served}


# ---------------------------------------------------------------- report
def copies_per_node(memory: dict, ranks: int, n: int) -> float:
    """ranks x private + shared host bytes of the index, in float16 copies of N x DIM."""
    return (ranks * max(0, memory["anon"]) + max(0, memory["file"])) / (n * DIM * 2)


def table_rows(result: dict, step_ms, ranks: int) -> list:
    n, rows = result["n"], []
    for s in result["served"]:
        label = s["label"]
        t = label.split()[1] if s["kind"].startswith("faiss") else None
        build = result["built"].get(t, {}) if t else {}
        if "error" in s:
            rows.append([f"{n:,}", label, "-", "-", "-", f"error: {s['error']}", "-", "-", "-", "-", "-"])
            continue
        mem = {k: max(s["loaded"][k], s["searched"][k]) for k in ("anon", "file")}
        ms = s["search_ms"]
        made = result["made"]
        disk = build.get("bytes") if t else made["files"][made["embeddings_file"]] if "files" in made else None
        rows.append([
            f"{n:,}", label, f"{build['build_s']:.1f}" if "build_s" in build else "-",
            f"{disk / MIB:,.0f}" if disk else "-", f"{s['load_s']:.2f}",
            f"{mem['anon'] / MIB:,.0f} + {mem['file'] / MIB:,.0f}", f"{copies_per_node(mem, ranks, n):.2f}",
            " / ".join(f"{ms[q]:.1f}" for q in ms),
            f"{ms[min(ms, key=int)] / step_ms:.3f}" if step_ms else "-",
            f"{s['swap_s']:.2f}", f"{s['swap_peak'] / MIB:,.0f}",
        ])
    return rows


def print_report(results: list, step: dict, args) -> None:
    q = " / ".join(str(x) for x in args.queries)
    header = ["N", "search", "build s", "disk MiB", "load s", "host MiB anon + file",
              f"copies/node ({args.ranks_per_node} ranks)", f"search ms (q = {q})",
              f"search {min(args.queries)} / step", "swap s", "swap peak MiB"]
    print(f"\nstep: {step['what']}: {step['ms']} ms; k = {args.k} + {args.exclude} excluded; median of "
          f"{args.repeat}; synthetic standard normal vectors, d = {DIM}, stored float16")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for result in results:
        for row in table_rows(result, step["ms"], args.ranks_per_node):
            print("| " + " | ".join(row) + " |")
        for t, b in result["built"].items():
            if "skipped" in b or "error" in b:
                print(f"({result['n']:,} {t}: {b.get('skipped') or b.get('error')})")
    for result in results:
        made = result["made"]
        if "commit_s_v1" in made:
            files = ", ".join(f"{name} {size / MIB:,.0f} MiB" for name, size in sorted(made["files"].items()))
            print(f"{result['n']:,}: committing a version (a {made['index_type']} index and its embeddings, "
                  f"checksummed, flushed to disk) took {made['commit_s_v1']:.1f} s and {made['commit_s_v2']:.1f} s; "
                  f"files: {files}")
            if "separate_embeddings_s" in made:
                print(f"{result['n']:,}: a separate embeddings.npy beside the index (as before flat16 held the rows) "
                      f"would add {made['separate_embeddings_s']:.1f} s to a commit (same run)")
            print_merge(result["n"], made.get("merge", {}))
    print()
    for result in results:
        print_goals(result, step, args)


def print_merge(n: int, merge: dict) -> None:
    """The merge of a sharded build beside its baseline, in float16 copies of the embeddings."""
    if "merged" not in merge:
        if "error" in merge:
            print(f"{n:,}: merging shards failed: {merge['error']}")
        return
    copy = n * DIM * 2
    new, old = merge["merged"], merge["concatenated"]
    print(f"{n:,}: merging {merge['shards']} shards into a version took {new['s']:.1f} s and at most "
          f"{new['peak_anon'] / MIB:,.0f} MiB of private memory ({new['peak_anon'] / copy:.2f} copies); the shards "
          f"concatenated first (as before, same run): {old['s']:.1f} s, {old['peak_anon'] / MIB:,.0f} MiB "
          f"({old['peak_anon'] / copy:.2f} copies)")
    print(info_line(f"{n:,}: merge private memory / concatenated", new["peak_anon"] / max(old["peak_anon"], 1),
                    "the merge holds the index's copy only"))


def print_goals(result: dict, step: dict, args) -> None:
    n = result["n"]
    for s in result["served"]:
        if "error" in s:
            continue
        what = f"{n:,} {s['label']}"
        mem = {k: max(s["loaded"][k], s["searched"][k]) for k in ("anon", "file")}
        copies = copies_per_node(mem, args.ranks_per_node, n)
        line = f"{what}: host memory of the index a node, in copies"
        if n == PAPER_N:
            print(goal_line(line, copies, "<=", 1))
        else:  # a process's fixed overheads dominate at small N
            print(info_line(line, copies, "the goal is for 13,353,718 blocks"))
        if not step["ms"]:
            continue
        if "products_ms" in s:
            shares = ", ".join(f"{q} queries {s['products_ms'][q]:.1f} of {s['search_ms'][q]:.1f} ms"
                               for q in s["search_ms"])
            print(f"{what}: inner products alone: {shares} (the rest: top-k selection, merging, copy back)")
        ratio = s["search_ms"][str(min(args.queries))] / step["ms"]
        line = f"{what}: search {min(args.queries)} queries / step"
        if n == PAPER_N and "GPU" in s["label"] and "realm_base" in step["what"]:
            print(goal_line(line, ratio, "<=", STEP_GOAL, digits=3))
        else:
            print(info_line(line, ratio, "the goal is for 13,353,718 blocks on one GPU, realm_base step", 3))


# ---------------------------------------------------------------- main
def parse_limits(items) -> dict:
    limits = dict(BUILD_LIMITS)
    for item in items or []:
        t, _, value = item.partition("=")
        if t not in FAISS_TYPES or not value.isdigit():
            raise SystemExit(f"--build-limits {item!r}: expected TYPE=N with TYPE one of {', '.join(FAISS_TYPES)}")
        limits[t] = int(value)
    return limits


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, PAPER_N],
                   help="numbers of vectors (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cuda adds torch (and faiss-gpu) search on the GPU; auto: cuda when torch sees one")
    p.add_argument("--types", nargs="+", default=["flat16", "flat", "ivf_flat", "ivf_pq", "hnsw"], choices=FAISS_TYPES,
                   help="faiss index types built and searched on the CPU (default: %(default)s)")
    p.add_argument("--commit-type", choices=FAISS_TYPES,
                   help="index type of the committed versions v1 and v2 (default: what a version gets by default)")
    p.add_argument("--build-limits", nargs="*", metavar="TYPE=N",
                   help="build TYPE only up to N vectors (0: no limit); defaults "
                        + ", ".join(f"{t}={v}" for t, v in BUILD_LIMITS.items()))
    p.add_argument("--queries", type=int, nargs="+", default=[8, 64], help="query batch sizes (default: 8 64)")
    p.add_argument("--k", type=int, default=8, help="blocks retrieved a query (default: %(default)s)")
    p.add_argument("--exclude", type=int, default=1, help="ids excluded a query (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=5, help="timed searches a batch size; median (default: 5)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=("fp32", "fp16"),
                   help="torch GPU search precisions (default: fp32 fp16)")
    p.add_argument("--ranks-per-node", type=int, default=8, help="ranks sharing a node's host memory (default: 8)")
    p.add_argument("--merge-shards", type=int, default=16,
                   help="shards a sharded build's merge is measured with; 0 skips it (default: %(default)s)")
    p.add_argument("--step-ms", type=float, help="the training step in ms (default: measured)")
    p.add_argument("--step-arch", help="arch of the measured step (default realm_base bf16 on GPU, realm_tiny "
                                       "fp32 on CPU)")
    p.add_argument("--step-steps", type=int, default=10, help="steps bench/pretrain_step.py times (default 10)")
    p.add_argument("--workdir", help="where versions are written (default: a temporary directory; needs ~2 x "
                                     "(N x d x 6) bytes at the largest N, and N x d x 6 more to measure a merge)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds a measurement may take (default 1800)")
    p.add_argument("--out", help="write all measurements as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.build_limits = parse_limits(args.build_limits)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main():
    if "--child" in sys.argv:
        spec = json.loads(sys.argv[sys.argv.index("--child") + 1])
        light_package()
        print(json.dumps(CHILDREN[spec["kind"] if spec["kind"] in CHILDREN else "serve"](spec)))
        return
    args = parse_args()
    started = time.perf_counter()
    root = args.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    os.makedirs(root, exist_ok=True)
    try:
        results = [run_size(args, n, root) for n in args.sizes]
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    step = measure_step(args)
    print_report(results, step, args)
    print(f"\n{time.perf_counter() - started:.0f} s in all", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "child"}, "step": step,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
