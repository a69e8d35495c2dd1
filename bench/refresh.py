"""Training step time with an index refresh running in the background, against without one, in one run.

    python bench/refresh.py [--arch realm_tiny] [--batch-size 8] [--device cpu|cuda] [--refresh-devices IDS]

fairseq's Trainer runs ``realm_pretrain`` on the shipped Wikipedia corpus (INDEX v1: the model's own
document embeddings) with ``--refresh-interval-updates`` set so that the first refresh starts after
``--warmup + --steps`` updates and then every ``--warmup + --steps``; the run goes on until
``--refreshes`` refreshes have been swapped in and ``--steps`` more updates have run. Every update is timed and counted as "with refresh" when a refresh (snapshot,
job or loading the new version) was under way when it started, else "without". Reports the median
step times and their ratio, the CPU cores each side used meanwhile (CPU time / wall time: the trainer's
process, and the refresh's processes), and the refresh's wall time (snapshot to committed version)
against ``realm-build-index`` alone on the same snapshot and corpus.

On a GPU, ``--refresh-devices 0`` (the default with ``--device cuda``) puts the refresh on the
trainer's GPU; ``--refresh-devices ''`` on the CPU cores, i.e. a device of its own, which leaves the
trainer only the background load and the per-update all-reduce. Goal: ratio <= 1.05 wherever the trainer
runs on a GPU; a CPU trainer shares its cores with a CPU refresh, so there the ratio has no goal.
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from goals import goal_line, info_line  # bench/goals.py (this script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "examples", "realm", "data")


def build_trainer(corpus, index, args):
    from fairseq import tasks
    from fairseq.trainer import Trainer

    from realm_fairseq.cli.train import training_config

    argv = [corpus, "--task", "realm_pretrain", "--index", index, "--arch", args.arch, "--criterion", "realm_mlm",
            "--optimizer", "adam", "--lr", "1e-4", "--lr-scheduler", "fixed", "--batch-size", str(args.batch_size),
            "--retrieval-topk", str(args.topk), "--required-batch-size-multiple", "1", "--num-workers", "0",
            "--refresh-interval-updates", str(args.warmup + args.steps), "--refresh-devices", args.refresh_devices,
            "--seed", "1", "--no-progress-bar"]
    argv += ["--cpu"] if args.device == "cpu" else ["--bf16"] * args.bf16
    cfg = training_config(argv)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    return task, trainer


def cpu_seconds():
    """(this process, its reaped child processes) CPU seconds."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="realm_tiny", help="realm architecture")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5, help="updates not timed")
    parser.add_argument("--steps", type=int, default=30, help="updates timed without a refresh, before and after")
    parser.add_argument("--refreshes", type=int, default=2, help="refreshes to swap in before stopping")
    parser.add_argument("--max-updates", type=int, default=5000, help="give up after this many updates")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", type=int, default=1, help="train in bf16 on a GPU (1) or fp32 (0)")
    parser.add_argument("--refresh-devices", default=None,
                        help="GPUs of the refresh (default: 0 with --device cuda, i.e. the trainer's; '' = CPU)")
    args = parser.parse_args()
    if args.refresh_devices is None:
        args.refresh_devices = "0" if args.device.startswith("cuda") else ""

    import realm_fairseq  # noqa: F401  (registers the task, model and criterion)
    from fairseq.models import ARCH_CONFIG_REGISTRY

    from realm_fairseq.data.corpus import BlockCorpus
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
    from realm_fairseq.models.config import RealmConfig
    from realm_fairseq.models.realm import RealmModel
    from realm_fairseq.indexing.embed import embed_blocks
    from realm_fairseq.models.loading import EmbedderSource
    from realm_fairseq.retrieval.versions import IndexStore

    tmp = tempfile.mkdtemp(prefix="bench-refresh-")
    corpus_dir, index = os.path.join(tmp, "corpus"), os.path.join(tmp, "index")
    prepare_corpus([os.path.join(DATA, "enwiki-sample-articles.jsonl.gz")],
                   os.path.join(DATA, "bert-base-uncased-vocab.txt"), corpus_dir,
                   CorpusConfig(workers=2, salient_spans="regex", no_progress=True))
    corpus = BlockCorpus(corpus_dir)
    model_args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[args.arch](model_args)
    first = RealmModel.build_model(RealmConfig(**vars(model_args)), argparse.Namespace(
        source_dictionary=corpus.dictionary))
    IndexStore(index).commit(embed_blocks(EmbedderSource(first.doc_embedder, {}), corpus, device=args.device,
                                          progress=False), corpus.checksum, {"kind": "initial", "update": 0})
    del first

    task, trainer = build_trainer(corpus_dir, index, args)
    refresher, scheduler = task.refresher, task.refresher.scheduler
    itr = trainer.get_train_iterator(epoch=1, load_dataset=True).next_epoch_itr(shuffle=True)
    times = {"without": [], "with": []}
    window = None  # (wall, trainer cpu, children cpu) when the current refresh started
    used = {"wall": 0.0, "trainer": 0.0, "refresh": 0.0}  # summed over refreshes
    swaps = []  # updates at which a new version was swapped in
    for sample in itr:
        busy = scheduler.in_flight is not None or refresher.loader.busy
        start = time.perf_counter()
        trainer.train_step([sample])
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        updates = trainer.get_num_updates()
        if updates > args.warmup:
            times["with" if busy else "without"].append(elapsed)
        if window is None and scheduler.in_flight is not None:
            window = (time.perf_counter(), *cpu_seconds())
        elif window is not None and scheduler.in_flight is None:  # the refresh process has exited
            mine, children = cpu_seconds()
            for key, now, then in (("wall", time.perf_counter(), window[0]), ("trainer", mine, window[1]),
                                   ("refresh", children, window[2])):
                used[key] += now - then
            window = None
        if task.retriever.version > len(swaps) + 1:
            swaps.append(updates)
        if len(swaps) >= args.refreshes and updates >= swaps[args.refreshes - 1] + args.steps:
            break
        if updates >= args.max_updates:
            sys.exit(f"only {len(swaps)} refresh(es) swapped in within {args.max_updates} updates")
    else:
        sys.exit(f"the epoch ended after {trainer.get_num_updates()} updates, before {args.refreshes} refreshes")
    refresher.close()

    manifest = IndexStore(index).manifest(2)
    snapshot, update = manifest["encoder"]["path"], manifest["encoder"]["update"]
    refresh_wall = os.path.getmtime(os.path.join(index, "v2", "manifest.json")) - scheduler.started[update]
    device = "cuda" if args.refresh_devices else "cpu"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "realm_fairseq.cli.build_index", "--corpus", corpus_dir,
                    "--checkpoint", snapshot, "--out", os.path.join(tmp, "alone"), "--device", device,
                    "--no-progress"], check=True, capture_output=True,
                   env=dict(os.environ, CUDA_VISIBLE_DEVICES=args.refresh_devices))
    alone = time.perf_counter() - start
    shutil.rmtree(tmp, ignore_errors=True)

    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    where = f"GPU(s) {args.refresh_devices}" if args.refresh_devices else "CPU"
    print(f"\n{args.arch}, batch {args.batch_size}, k={args.topk}, trainer on {args.device}, refresh on {where}; "
          f"{len(corpus)} blocks; versions swapped in at updates {', '.join(map(str, swaps))}")
    print("| | updates | median step ms | cores used |\n|---|---|---|---|")
    print(f"| without refresh | {len(times['without'])} | {1000 * without:.1f} | |")
    print(f"| with refresh in the background | {len(times['with'])} | {1000 * with_:.1f} | "
          f"trainer {used['trainer'] / used['wall']:.2f}, refresh {used['refresh'] / used['wall']:.2f} |")
    ratio, shared_cores = "step time with / without refresh", args.device == "cpu" and not args.refresh_devices
    print("\n" + (info_line(ratio, with_ / without, "the CPU trainer and the refresh share the same cores")
                  if shared_cores else goal_line(ratio, with_ / without, "<=", 1.05)))
    print(info_line(f"refresh wall time (snapshot to committed version) {refresh_wall:.1f}s / realm-build-index "
                    f"alone on the same snapshot {alone:.1f}s", refresh_wall / alone,
                    "the refresh shares the machine with training"))


if __name__ == "__main__":
    main()
