r"""Plots the loss curves of training runs (their metrics.csv) to a PNG.

Example::

    python experiments/plot_losses.py --runs=/tmp/focus/pretrain,/tmp/focus/em \
        --out=/tmp/focus/curves.png
"""

from absl import app, flags

from focus_jax.train import plot

_RUNS = flags.DEFINE_list("runs", None, "Run directories (--workdir of training stages), "
                          "one panel each.", required=True)
_OUT = flags.DEFINE_string("out", "loss_curves.png", "Output PNG.")
_SMOOTH = flags.DEFINE_integer("smooth", 5, "Moving-average window (steps of the log).",
                               lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(plot.plot_runs(_RUNS.value, _OUT.value, smooth=_SMOOTH.value))


if __name__ == "__main__":
  app.run(main)
