"""Data-parallel `cnndsl train --engine torch --nproc N`: N worker processes on this
machine (times --nnodes machines), started by torch's elastic launcher, the library behind
`torchrun` (torch.distributed.launcher.api.elastic_launch), with torchrun's meaning of
--nnodes, --rdzv-endpoint and --rdzv-id (the c10d rendezvous; no etcd).

Each worker runs `cnndsl train` again with the same arguments (cnndsl.cli.run_train, as one
rank: `worker_ranks()`), so data, settings, resume checks and the checkpoint are the one
code path; rank 0 alone shows progress and writes files. The launching process has
checked everything first, so user errors are said once, by it.

Signals: Ctrl-C reaches every process of the terminal's group; the launcher process lets
the workers stop by themselves (they agree on the batch, rank 0 saves) and returns rank
0's exit status (130). SIGTERM to the launcher goes to the workers as SIGTERM (torch's
agent), which stop the same way.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import uuid

from cnndsl.errors import CnnDslError

#: set in a worker process by `_worker` (its Ranks)
_WORKER = None


def worker_ranks():
    """This process's cnndsl.torchengine.Ranks inside a launched job, None elsewhere."""
    return _WORKER


def is_distributed(args) -> bool:
    """Whether the flags ask for more than one process (or for a multi-node rendezvous)."""
    return (args.nproc or 1) > 1 or (args.nnodes or 1) > 1 or bool(args.rdzv_endpoint)


def launch(args) -> int:
    """Run `args` (the parsed `cnndsl train` arguments) on --nproc workers per node and
    return rank 0's exit status (or this node's first worker's on other nodes)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nodes = args.nnodes or 1
    config = LaunchConfig(
        min_nodes=nodes, max_nodes=nodes, nproc_per_node=args.nproc or 1,
        run_id=args.rdzv_id or (uuid.uuid4().hex if not args.rdzv_endpoint else "cnndsl"),
        rdzv_backend="c10d",
        rdzv_endpoint=args.rdzv_endpoint or "localhost:0",  # as torchrun --standalone
        max_restarts=0, monitor_interval=0.1, start_method="spawn",
        # SIGINT is the workers' own (they stop together and save); the agent keeps the rest
        signals_to_handle="SIGTERM,SIGHUP,SIGQUIT")
    previous = _hold_sigint()  # and the agent's handlers replace these: put back after
    try:
        results = elastic_launch(config, _worker)(args)
    except ChildFailedError as error:
        raise CnnDslError(f"a training process failed: {_first_failure(error)}",
                          hint="its message is above") from None
    except Exception as error:  # the rendezvous: a wrong or unreachable --rdzv-endpoint
        if type(error).__module__.startswith("torch.distributed"):
            raise CnnDslError(f"the workers could not meet: {error}",
                              hint="check --rdzv-endpoint HOST:PORT (reachable from every "
                                   "node) and --nnodes") from None
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return int(results[min(results)]) if results else 0


#: the signals torch's agent takes over in the launcher (and SIGINT, see `_hold_sigint`)
_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")


def _hold_sigint() -> dict:
    """In the launcher, Ctrl-C only waits for the workers (who got it too). Returns the
    handlers to put back afterwards (none off the main thread, where none are set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {getattr(signal, name): signal.getsignal(getattr(signal, name))
                for name in _SIGNALS if hasattr(signal, name)}
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    return previous


def _first_failure(error) -> str:
    failures = getattr(error, "failures", {}) or {}
    for rank, failure in sorted(failures.items()):
        return f"rank {rank} exited with status {failure.exitcode}"
    return str(error).strip().splitlines()[0] if str(error).strip() else "unknown failure"


def _worker(args) -> int:
    """One rank: join the process group (gloo on CPU, NCCL on CUDA), run `cnndsl train`
    with `args`, leave. Ranks other than 0 print nothing. A failing rank exits with its
    status, so the launcher stops the others (they would wait for it forever)."""
    global _WORKER
    import torch.distributed as dist

    from cnndsl import cli
    from cnndsl.torchengine import Ranks

    env = os.environ
    ranks = Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]),
                  int(env["LOCAL_WORLD_SIZE"]), distributed=True)
    _WORKER = ranks
    if ranks.rank:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (this process's for its life)
        sys.stderr = sys.stdout
    if args.device == "cuda":
        import torch

        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    context: dict = {}
    try:
        code = cli.run_train(args, context)
    except CnnDslError as error:
        print(error.format(cli._source_for(context.get("path")),
                           context.get("path") or "cnndsl"), file=sys.stderr)
        code = 1
    except KeyboardInterrupt:  # before the Trainer took the signal over
        code = 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # trained and saved: leave quietly
    if code not in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM):
        sys.exit(code)
    dist.destroy_process_group()
    return code
