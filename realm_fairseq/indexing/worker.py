"""``python -m realm_fairseq.indexing.worker PLAN.json``: run one index refresh on this machine.

The local launcher's background process (:mod:`realm_fairseq.indexing.launchers`). With one shard it
runs the build ``realm-build-index --checkpoint SNAPSHOT`` runs (:func:`~realm_fairseq.indexing.build.run_build`)
in-process; with more it starts one process per shard (``--shard I``), each on its GPU from the plan
(CPU if none), waits for all of them and runs the merge that commits the version. It exits non-zero if any part fails; the trainer then logs this
process's log. Every process here exits when its parent dies (Linux), so a killed trainer leaves no
refresh behind.
"""
import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
from typing import List, Optional

from realm_fairseq.errors import USER_ERRORS, log_to_stderr, message
from realm_fairseq.indexing.build import run_build
from realm_fairseq.indexing.launchers import RefreshPlan

logger = logging.getLogger("realm_fairseq.indexing.worker")

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the parent process exits (Linux); exit now if it is already gone."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        sys.exit(f"refresh worker: the process that started it ({parent_pid}) has exited")


def run_shards(plan: RefreshPlan) -> None:
    """Embed every shard in a process of its own, in parallel; raise if any failed."""
    procs = []
    for shard_id in range(plan.num_shards):
        device = plan.shard_device(shard_id)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=device or "")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", __spec__.name, plan.path, "--shard", str(shard_id),
             "--parent-pid", str(os.getpid())], env=env, stdin=subprocess.DEVNULL))
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise RuntimeError(f"shard(s) {', '.join(map(str, failed))} of {plan.num_shards} failed (see above)")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("``", ""),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("plan", help="plan.json written by the trainer")
    parser.add_argument("--shard", type=int, default=None, help="embed only this shard (a child process)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process exits")
    args = parser.parse_args(argv)
    log_to_stderr()
    if args.parent_pid is not None:
        die_with_parent(args.parent_pid)
    plan = RefreshPlan.load(args.plan)
    if args.shard is not None:
        device = "cuda" if plan.shard_device(args.shard) is not None else "cpu"
        run_build(plan.build_request(shard_id=args.shard, device=device))
    elif plan.num_shards == 1:
        run_build(plan.build_request(device="cuda" if plan.devices else "cpu"))
    else:
        run_shards(plan)
        run_build(plan.build_request(merge=True))


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, *USER_ERRORS) as e:  # the trainer logs this line as the refresh's cause
        sys.exit(f"refresh worker: error: {message(e)}")
