"""Peak memory and time of a REALM pre-training step with ``--checkpoint-activations`` against without, in the
same run.

    python bench/activation_memory.py [--arch realm_minilm] [--batch-size 4] [--topk 4] [--steps 4]
                                      [--device cpu] [--dtype fp32|bf16]

The step is the realm_mlm criterion's forward and backward (pre-training's three towers: query embedding,
re-embedding the k candidates and the null document, the reader on the joined sequences; paper, section 3.2)
on batches of masked sentences from the shipped Wikipedia corpus, run by two models with the same weights,
one built with ``checkpoint_activations``. Peak memory is what the step allocates above what was allocated
before it: on a GPU ``torch.cuda.max_memory_allocated``, on the CPU the running sum of the allocations and
frees torch's profiler records. Goals: the checkpointed step's peak <= 0.5 of the plain one's, its time <= 1.5
of it (one more forward pass of every layer), and the same gradients (to the bit on the CPU; within 1e-3 of
the largest gradient on a GPU, whose attention kernels may sum in another order).
"""
import shutil
import statistics
import tempfile

import torch

from goals import goal_line  # bench/goals.py (this script's directory)
from pretrain_step import (build_model, criterion_step, masked_batches, pretraining, shipped_corpus,  # bench/
                           step_parser, timed)


def cpu_peak_bytes(fn) -> int:
    """The most bytes ``fn()`` holds allocated on the CPU at once, from the allocations and frees torch's
    profiler records in order."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profile:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in profile.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_bytes(fn, device: str) -> int:
    """The most bytes ``fn()`` allocates on ``device`` above what was allocated before it. ``fn`` must not
    free what was allocated before it: the profiler would count the frees and not the allocations."""
    if not device.startswith("cuda"):
        return cpu_peak_bytes(fn)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def step_peak(model, step, batch, device: str) -> int:
    """The peak memory of ``step(batch)``, the last step's gradients freed before it (as its zero_grad would)."""
    model.zero_grad(set_to_none=True)
    return peak_bytes(lambda: step(batch), device)


def gradients(model, step, batch) -> dict:
    step(batch)
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def largest_difference(a: dict, b: dict) -> float:
    """The largest difference between the gradients of ``a`` and ``b``, over the largest gradient of ``a``."""
    if a.keys() != b.keys():
        raise SystemExit(f"the two models have gradients for different parameters: {sorted(a.keys() ^ b.keys())}")
    largest = max(g.abs().max().item() for g in a.values())
    return max((a[n].float() - b[n].float()).abs().max().item() for n in a) / max(largest, 1e-30)


def main():
    parser = step_parser(__doc__, arch="realm_minilm", batch_size=4, topk=4, steps=4)
    args = parser.parse_args()

    import realm_fairseq  # noqa: F401  (registers the task, model and criterion)

    tmp = tempfile.mkdtemp(prefix="bench-activations-")
    corpus = shipped_corpus(tmp)
    device = args.device
    plain = build_model(args.arch, corpus, device, args.dtype, reader=True)
    checkpointed = build_model(args.arch, corpus, device, args.dtype, reader=True, checkpoint_activations=True)
    checkpointed.load_state_dict(plain.state_dict())
    _, criterion = pretraining(plain, corpus, args.topk)  # one retriever for both: the same candidates
    batches = masked_batches(corpus, args.steps, args.batch_size, device)
    models = {"plain": plain, "checkpointed": checkpointed}
    steps = {name: criterion_step(model, criterion) for name, model in models.items()}

    peaks = {name: statistics.median(step_peak(models[name], step, b, device) for b in batches)
             for name, step in steps.items()}
    seconds = {name: timed(step, batches, device) for name, step in steps.items()}
    difference = largest_difference(*(gradients(models[name], steps[name], batches[0]) for name in models))
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.arch}, batch {args.batch_size}, k={args.topk} + null document, {device} {args.dtype}, "
          f"median of {args.steps} steps")
    print("| step | peak MiB | ms |\n|---|---|---|")
    for name in steps:
        print(f"| {name} | {peaks[name] / 2**20:.1f} | {1000 * seconds[name]:.1f} |")
    print("\n" + goal_line("peak memory: checkpointed / plain", peaks["checkpointed"] / peaks["plain"], "<=", 0.5))
    print(goal_line("time: checkpointed / plain", seconds["checkpointed"] / seconds["plain"], "<=", 1.5))
    exact = not device.startswith("cuda")
    print(goal_line("gradients: largest difference / largest gradient", difference, "==" if exact else "<=",
                    0.0 if exact else 1e-3, digits=6))


if __name__ == "__main__":
    main()
