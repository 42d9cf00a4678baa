"""Architecture and hyper-parameter sweeps on Ray Tune (`cnndsl sweep`).

A sweep is a list of candidates, each a set of `let` bindings and training settings:

    cnndsl sweep lecture.cnn --grid k=1,2 --grid m=2,3 --epochs 3 --limit 5000

- `space`: the `--grid` / `--range` / `--random` flags read into candidates, every
  candidate shape-checked before anything runs (the infeasible ones are reported with their
  error, never launched), with its parameter and MAC counts.
- `trials`: one Ray Tune trial per feasible candidate; a trial is `cnndsl train`'s own
  Trainer, reporting each epoch to Tune (so ASHA can stop it early) and keeping the weights
  of its best epoch as a Tune checkpoint.
- `results`: the record of a sweep (`results.json`, written after every finished trial, so
  an interrupted sweep keeps them and `--resume` runs only the missing ones), the table,
  the CSV and the accuracy-against-cost plot with its Pareto front.

Ray is an optional extra (`pip install 'cnndsl[sweep]'`); only `trials` imports it.
"""
