"""The torch engine of `cnndsl train --engine torch`: the training steps run through the
generated PyTorch module (cnndsl.export.pytorch.module_source), in one process or as one
rank of a DistributedDataParallel job (cnndsl.ddp launches those).

Everything else is cnndsl's own Trainer (cnndsl.train): the epoch's shuffle, the batches,
their augmentation, progress, callbacks, metrics and the `.npz` checkpoint. The Trainer
calls this engine through its seam (`Trainer.use_engine`): `step`, `set_lr`, `evaluate`,
`agree_stop` and `sync_back`, which copies the module's weights, BatchNorm statistics and
optimizer state back into the cnndsl model and optimizer before each save, so the
checkpoint is the usual one and either engine can resume it.

Same result on any number of ranks: every rank sees the same global batch (the same
permutation of (seed, epoch), the same augmentation of (seed, epoch, step)) and takes its
contiguous share of the rows (cnndsl.parallel.shard_bounds). Its loss is the sum of its
rows' cross-entropies times world / global batch, so DDP's average of the ranks' gradients
is the gradient of the mean loss over the global batch, as one process computes it.
What is not shared: BatchNorm's batch statistics on CPU (SyncBatchNorm runs on GPUs only;
on CUDA it is used) and Dropout's masks (each rank draws its own, from (seed, epoch, step,
rank), so a resumed run draws them again).
"""

from __future__ import annotations

import os

import numpy as np

from cnndsl.callbacks import MissingPackageError
from cnndsl.errors import CnnDslError

#: what `cnndsl train --engine torch` says when PyTorch is missing
INSTALL = "the torch engine needs PyTorch: pip install 'cnndsl[torch]' (the CPU wheel: " \
          "torch==2.13.0)"
#: mixed into the dropout seeds so they differ from the other streams of the same seed
_DROPOUT_STREAM = 0x70C4


def import_torch():
    """torch, or a MissingPackageError that says how to install it."""
    try:
        import torch
    except ImportError:
        raise MissingPackageError(INSTALL) from None
    return torch


def check_device(device: str) -> None:
    """Refuse --device cuda where torch sees no GPU (a CPU wheel, or no driver)."""
    torch = import_torch()
    if device == "cuda" and not torch.cuda.is_available():
        raise CnnDslError(f"--device cuda: torch {torch.__version__} sees no CUDA device",
                          hint="train on the CPU (--device cpu, gloo), or install a CUDA "
                               "build of torch on a machine with a GPU")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def module_class(model):
    """The nn.Module class of `model`'s generated PyTorch source (exec'd here: the same
    text `cnndsl export --format pytorch` writes)."""
    from cnndsl.export.pytorch import module_source

    import_torch()
    namespace = {"__name__": f"cnndsl_generated_{model.name}"}
    code = compile(module_source(model), f"<{model.name} (generated)>", "exec")
    exec(code, namespace)  # noqa: S102 (cnndsl's own generated source, not user text)
    return next(value for value in namespace.values()
                if isinstance(value, type) and hasattr(value, "input_shape")
                and hasattr(value, "forward"))


def name_pairs(model) -> list[tuple[str, str]]:
    """(cnndsl parameter or buffer name, its key in the module's state_dict), in layer order."""
    from cnndsl.export import layers
    from cnndsl.export.pytorch import attribute_names

    names = attribute_names(model)
    return [(f"{layer.name}.{local}", f"{names[layer.name]}.{local}")
            for layer in layers(model) for local in layer.weights]


class Ranks:
    """Where this process is in the job: its rank of `world`, and its local rank of
    `local_world` on this machine. `distributed` False: a single process, which uses no
    torch.distributed at all."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0,
                 local_world: int = 1, distributed: bool = False):
        self.rank, self.world = rank, world
        self.local_rank, self.local_world = local_rank, local_world
        self.distributed = distributed

    def share(self, n: int) -> tuple[int, int]:
        """[start, end) of this rank's rows of n."""
        from cnndsl.parallel import shard_bounds

        return shard_bounds(n, self.world)[self.rank]


class TorchEngine:
    """Trains `model`'s generated module with `config`'s optimizer, starting from the
    model's weights and `optimizer`'s state (cnndsl.optim: SGD or Adam/AdamW).

    x: N×*input float arrays, channels-last as the DSL declares them (the module permutes
    inside); y: N int64 class indices. `ranks` says where this process is (default: alone).
    """

    def __init__(self, model, optimizer, config, device: str = "cpu", ranks: Ranks | None = None,
                 threads: int | None = None):
        from cnndsl.export.pytorch import state_dict

        torch = import_torch()
        self.torch, self.config = torch, config
        self.ranks = ranks or Ranks()
        self.device = torch.device(device if device != "cuda" else
                                   f"cuda:{self.ranks.local_rank}")
        self.threads = threads or max(1, available_cores() // self.ranks.local_world)
        torch.set_num_threads(self.threads)
        self.dtype = getattr(torch, str(model.dtype))
        self.classes = int(np.prod(model.output_shape))
        self.pairs = name_pairs(model)
        module = module_class(model)()
        module.load_state_dict(state_dict(model))  # cnndsl's weights: the same start
        self.module = module.to(self.device, self.dtype)  # the network (state, evaluation)
        self.network = self._data_parallel() if self.ranks.distributed else self.module
        self.params = dict(self.module.named_parameters())
        self.optimizer = self._make_optimizer(optimizer)

    def _data_parallel(self):
        """The module as one replica of a DDP job (SyncBatchNorm on GPUs, where it runs)."""
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            self.module = self.torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
        # a Conv on one input channel: its weight gradient's size-1 axis has another (as
        # valid) stride than DDP's bucket, which then copies it, harmlessly, with a warning
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        cuda = self.device.type == "cuda"
        # gradients as views of DDP's buckets: the all-reduce writes them in place
        return DistributedDataParallel(self.module, device_ids=[self.device.index] if cuda
                                       else None, gradient_as_bucket_view=True)

    def describe(self) -> dict:
        """What the metrics JSON and the checkpoint record of this engine."""
        backend = (self.torch.distributed.get_backend() if self.ranks.distributed else None)
        return {"name": "torch", "torch": self.torch.__version__, "device": self.device.type,
                "processes": self.ranks.world, "threads_per_process": self.threads,
                "backend": backend}

    # ---- optimizer state, both ways ----------------------------------------------------
    def _make_optimizer(self, source):
        """The torch optimizer of the config, with the state of cnndsl's `source`."""
        torch, config = self.torch, self.config
        params = list(self.params.values())
        if config.optimizer == "sgd":
            made = torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                                   nesterov=bool(config.nesterov and config.momentum),
                                   weight_decay=config.weight_decay)
        else:
            kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
            made = kind(params, lr=config.learning_rate, betas=source.betas, eps=source.eps,
                        weight_decay=config.weight_decay)
        self.steps = source.steps
        if source.steps:  # before the first step both start empty (SGD's buffer = first g)
            for name, key in self.pairs:
                if key in self.params:
                    made.state[self.params[key]] = self._torch_slots(source, name)
        return made

    def _torch_slots(self, source, name: str) -> dict:
        tensor = self._tensor
        if hasattr(source, "velocity"):
            return {"momentum_buffer": tensor(source.velocity[name])} if source.velocity else {}
        return {"step": self.torch.tensor(float(source.steps)),
                "exp_avg": tensor(source.m[name]), "exp_avg_sq": tensor(source.v[name])}

    def _tensor(self, array: np.ndarray):
        return self.torch.from_numpy(np.array(array)).to(self.device, self.dtype)

    def sync_back(self, model, optimizer) -> None:
        """Copy the module's weights and BatchNorm statistics into `model` and the torch
        optimizer's state into cnndsl's `optimizer` (its `state_dict` layout: steps,
        velocity/<name> or m/<name> and v/<name>), exactly (same dtype)."""
        from cnndsl.export.pytorch import load_pytorch_state

        load_pytorch_state(model, {key: value.detach().cpu()
                                   for key, value in self.module.state_dict().items()})
        optimizer.steps = self.steps
        for name, key in self.pairs:
            if key not in self.params:
                continue
            slots = self.optimizer.state.get(self.params[key], {})
            if hasattr(optimizer, "velocity"):
                if optimizer.velocity and "momentum_buffer" in slots:
                    optimizer.velocity[name][...] = _array(slots["momentum_buffer"])
            elif slots:
                optimizer.m[name][...] = _array(slots["exp_avg"])
                optimizer.v[name][...] = _array(slots["exp_avg_sq"])

    # ---- the Trainer's seam ---------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, x: np.ndarray, y: np.ndarray, epoch: int, step: int) -> tuple[float, int]:
        """One step on the global batch x: N×*input, y: N (this rank trains on its share):
        (mean cross-entropy over the global batch, how many of it the network got right)."""
        torch = self.torch
        torch.manual_seed(self._dropout_seed(epoch, step))
        start, end = self.ranks.share(len(x))
        weight = self.ranks.world / len(x)
        if end == start:  # fewer rows than ranks: a row that counts for nothing, since
            start, end, weight = 0, 1, 0.0  # every rank must take part in the step
        xb, yb = self._tensor(x[start:end]), self._labels(y[start:end])
        self.optimizer.zero_grad(set_to_none=False)  # DDP: the bucket views stay the grads
        logits = self.network(xb).reshape(len(xb), -1)
        loss_sum = torch.nn.functional.cross_entropy(logits, yb, reduction="sum")
        (loss_sum * weight).backward()
        self.optimizer.step()
        self.steps += 1
        correct = (logits.detach().argmax(dim=1) == yb).sum()
        counted = 1.0 if weight else 0.0
        totals = self._summed([loss_sum.detach() * counted, correct * counted])
        return float(totals[0]) / len(x), round(float(totals[1]))

    def _dropout_seed(self, epoch: int, step: int) -> int:
        """Dropout's seed for this step on this rank: a function of (seed, epoch, step,
        rank) alone, so a resumed run draws the masks the uninterrupted one drew."""
        words = [self.config.seed, epoch, step, self.ranks.rank, _DROPOUT_STREAM]
        return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)

    def _labels(self, y: np.ndarray):
        return self.torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device)

    def _summed(self, values: list):
        """The values summed over the ranks (float64, on the device NCCL needs)."""
        torch = self.torch
        totals = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device)
                              for v in values])
        if self.ranks.distributed:
            torch.distributed.all_reduce(totals)
        return totals.cpu().numpy()

    def agree_stop(self, signum) -> int:
        """The signal that stops the run (0: none) as all ranks agree on: a signal that
        reached any rank stops every rank before the same batch."""
        if not self.ranks.distributed:
            return int(signum or 0)
        flag = self.torch.tensor([int(signum or 0)], device=self.device)
        self.torch.distributed.all_reduce(flag, op=self.torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict:
        """Mean cross-entropy and accuracy (and top5 with more than 5 classes) of the
        network in inference mode on x: N×*input, y: N, as cnndsl.train.evaluate computes
        them (from the softmax probabilities); each rank measures its share of the rows."""
        from cnndsl.train import EVAL_BATCH, TOP_K, top_k_hits

        torch = self.torch
        start, end = self.ranks.share(len(x))
        loss_sum, correct, in_top = 0.0, 0, 0
        self.module.eval()
        try:
            with torch.no_grad():
                for first in range(start, end, EVAL_BATCH):
                    last = min(first + EVAL_BATCH, end)
                    logits = self.module(self._tensor(x[first:last])).reshape(last - first, -1)
                    probs = torch.softmax(logits, dim=1).cpu().numpy()
                    labels = np.asarray(y[first:last], dtype=np.int64)
                    picked = probs[np.arange(len(labels)), labels]
                    loss_sum += float(-np.log(np.maximum(picked, 1e-12)).sum())
                    correct += int((probs.argmax(axis=1) == labels).sum())
                    in_top += top_k_hits(probs, labels, TOP_K)
        finally:
            self.module.train()
        totals = self._summed([loss_sum, correct, in_top])
        result = {"loss": float(totals[0]) / len(x), "accuracy": float(totals[1]) / len(x)}
        if self.classes > TOP_K:
            result["top5"] = float(totals[2]) / len(x)
        return result


def _array(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()
