"""The candidates of a sweep run as Ray Tune trials.

Each trial is `cnndsl train`'s own Trainer on the candidate's network and settings. After
every epoch it reports the epoch's row to Tune (so ASHA's `--early-stop` can end it) with
the test accuracy of that epoch, and when the epoch is its best so far, its weights as a Tune
checkpoint (the usual cnndsl `.npz`, kept once per trial). The driver's `Recorder` hears of
each finished trial and hands it to the sweep's record at once, so Ctrl-C or a kill loses
only the trials that were still running.

Local by default: a Ray started for the sweep with this machine's cores, one trial per core
(`threads=1`: each trial's Numba and BLAS threads limited to one, at run time, inside the
trial's worker only). With `address`, an existing Ray cluster is joined as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cnndsl.callbacks import Callback, MissingPackageError

INSTALL_HINT = "install it with: pip install 'cnndsl[sweep]' (Ray Tune)"


def import_tune():
    """(ray, ray.tune), or a MissingPackageError saying how to install them."""
    try:
        import ray
        from ray import tune
    except ImportError:
        raise MissingPackageError("cnndsl sweep runs its trials on Ray Tune, which is not "
                                  "installed", hint=INSTALL_HINT) from None
    return ray, tune


@dataclass
class Job:
    """What every trial needs besides its data (shipped once to Ray's object store)."""

    text: str                 # the .cnn source
    path: str                 # its file name, for error messages and the checkpoint
    fixed: dict               # bindings of --set
    settings: dict            # training settings of the sweep's flags (--epochs, ...)
    data_bindings: dict       # {"classes": K} from the data, where the file leaves it unbound
    classes: list             # the dataset's class names
    data: str                 # the --data spec, as `cnndsl train` records it
    limit: int | None
    metric: str               # the history column trials are compared by (val_accuracy, ...)
    mode: str                 # max or min
    threads: int              # Numba/BLAS threads per trial
    candidates: dict          # number -> (bindings, settings, values)


def run_trial(config: dict, job: Job, dataset: tuple) -> None:
    """One trial (in a Ray worker): train candidate `config["trial"]` on
    `dataset` = (x_train, y_train, x_test, y_test), reporting every epoch to Tune."""
    from threadpoolctl import threadpool_limits

    _limit_numba_threads(job.threads)
    with threadpool_limits(limits=job.threads):
        _train(job, config["trial"], dataset)


def _limit_numba_threads(threads: int) -> None:
    import numba

    if not numba.config.DISABLE_JIT:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def _train(job: Job, number: int, dataset: tuple) -> None:
    from cnndsl.data import fingerprint, split_validation
    from cnndsl.model import Model
    from cnndsl.sweep.space import build
    from cnndsl.train import Trainer, checkpoint_meta

    bindings, settings, values = job.candidates[number]
    graph, config = build(job.text, job.path, {**job.fixed, **bindings},
                          {**job.settings, **settings}, job.data_bindings)
    x_train, y_train, x_test, y_test = dataset
    splits = (*split_validation(x_train, y_train, config.val, config.seed), x_test, y_test)
    model = Model(graph, seed=config.seed)
    meta = checkpoint_meta(model, text=job.text,
                           bindings={**job.data_bindings, **job.fixed, **bindings},
                           classes=job.classes, data=job.data, limit=job.limit,
                           fingerprint=fingerprint(*splits))
    meta["sweep"] = {"trial": number, "values": values}
    # the test split is measured by the reporter after every epoch (the best epoch's counts)
    no_test = (x_test[:0], y_test[:0])
    reporter = ReportEpochs(job.metric, job.mode, x_test, y_test)
    trainer = Trainer(model, config, (*splits[:4], *no_test), meta=meta, progress_bar=False,
                      log=None, callbacks=[reporter])
    trainer.run()


class ReportEpochs(Callback):
    """Reports each epoch's row to Tune, with the test split's accuracy for that epoch and
    the best epoch so far by `metric`; the best epoch's weights go with it as a checkpoint."""

    def __init__(self, metric: str, mode: str, x_test, y_test):
        self.metric, self.mode, self.x_test, self.y_test = metric, mode, x_test, y_test
        self.best = None

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        from ray import tune

        from cnndsl.train import evaluate

        row = dict(logs)
        if len(self.x_test):
            test = evaluate(self.model, self.x_test, self.y_test)
            row.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        value = row[self.metric]
        improved = self.best is None or (value > self.best["value"] if self.mode == "max"
                                         else value < self.best["value"])
        if improved:
            self.best = {"value": value, "epoch": epoch,
                         "test_accuracy": row.get("test_accuracy")}
        row.update(best_value=self.best["value"], best_epoch=self.best["epoch"],
                   best_test_accuracy=self.best["test_accuracy"])
        row = {k: v for k, v in row.items() if v is not None}
        if not improved:
            tune.report(row)
            return
        with tempfile.TemporaryDirectory() as folder:
            self.trainer.save(os.path.join(folder, WEIGHTS))
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))


WEIGHTS = "weights.npz"


class Recorder:
    """Builds the Tune callback that tells `record(number, status, result, weights, error)`
    of each trial as it ends (in the driver): status 'done', 'stopped early' (fewer epochs
    than asked: ASHA) or 'error'; `weights` the path of its best epoch's .npz (or None)."""

    def __init__(self, record, epochs: int):
        self.record, self.epochs, self.seen = record, epochs, set()

    def callback(self):
        from ray import tune

        recorder = self

        class _Callback(tune.Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                recorder.trial_ended(trial, error=None)

            def on_trial_error(self, iteration, trials, trial, **info):
                recorder.trial_ended(trial, error=_error_text(trial))

        return _Callback()

    def trial_ended(self, trial, error: str | None) -> None:
        self.ended(trial.config["trial"], trial.last_result or {}, trial.checkpoint, error)

    def ended(self, number: int, result: dict, checkpoint, error: str | None) -> None:
        if number in self.seen:
            return
        self.seen.add(number)
        epochs = int(result.get("epoch", 0) or 0)
        status = "error" if error else ("done" if epochs >= self.epochs else "stopped early")
        if checkpoint is None:
            self.record(number, status, result, None, error)
            return
        with checkpoint.as_directory() as folder:
            weights = Path(folder) / WEIGHTS
            self.record(number, status, result, weights if weights.exists() else None, error)


@contextlib.contextmanager
def _quiet_tune():
    """Tune's own console report off while the sweep runs (cnndsl prints a line per trial):
    its newer reporter prints a banner whatever the verbosity, the older one (chosen by
    this variable, read when `fit` starts) obeys verbose=0. Restored afterwards."""
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous


def _error_text(trial) -> str:
    """The last line of a failed trial's error (its traceback is in Ray's trial folder)."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, TypeError):
        return "the trial failed (no error text)"
    return lines[-1] if lines else "the trial failed"


def run(job: Job, dataset: tuple, numbers: list[int], recorder: Recorder, *, epochs: int,
        storage: str, address: str | None, early_stop: bool) -> None:
    """Run trials `numbers` on Ray Tune: a local Ray (this machine's cores) unless `address`
    names a cluster; `storage` holds Tune's trial folders and checkpoints (a folder every
    node can reach, or a cloud URI, on a cluster). Returns when every trial ended or the
    sweep was interrupted (Ctrl-C: Tune stops the running trials)."""
    ray, tune = import_tune()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else os.cpu_count(),
                 include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                 configure_logging=True)
    try:
        _fit(tune, job, dataset, numbers, recorder, epochs, storage, address, early_stop)
    finally:
        if started:
            ray.shutdown()


def _fit(tune, job, dataset, numbers, recorder, epochs, storage, address, early_stop):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    trainable = tune.with_resources(tune.with_parameters(run_trial, job=job, dataset=dataset),
                                    {"cpu": job.threads})
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1,
                               reduction_factor=2) if early_stop else FIFOScheduler())
    at_once = None if address else max(1, (os.cpu_count() or 1) // job.threads)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(numbers))},
        tune_config=tune.TuneConfig(metric=job.metric, mode=job.mode, scheduler=scheduler,
                                    max_concurrent_trials=at_once, reuse_actors=False),
        run_config=tune.RunConfig(
            name="trials", storage_path=str(storage), verbose=0,
            callbacks=[recorder.callback()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0)))
    with _quiet_tune():
        grid = tuner.fit()
    for result in grid:  # whatever the callbacks did not hear of (a Ray Client driver)
        number = (result.config or {}).get("trial")
        if number is not None and result.metrics and (result.error or result.metrics.get(
                "done") or result.metrics.get("epoch", 0) >= epochs):
            recorder.ended(number, result.metrics, result.checkpoint,
                           str(result.error).strip().splitlines()[-1] if result.error else None)
