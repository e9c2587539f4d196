r"""Builds the misfit prior: per-vertex σ multipliers of the face model.

Fits --num_faces unoccluded synthetic faces that carry appearance detail the
model cannot express (brows, lipstick, stubble, freckles) with the
analysis-by-synthesis fitter and records each vertex's residual
(focus_jax.fitting.build_prior). make_pseudo_masks.py --prior uses it so that
systematically hard-to-fit skin is not labelled outlier.

Example::

    python experiments/build_prior.py --flagfile=experiments/configs/tiny.flags \
        --out=/tmp/focus/prior/misfit_prior.npz --num_faces=16
"""

import json

from absl import app, flags

from focus_jax.train import flags as train_flags
from focus_jax.train import stages

train_flags.define_config_flags()
train_flags.define_distributed_flags()
flags.DEFINE_string("out", None, "Output .npz file.", required=True)
flags.DEFINE_integer("num_faces", 64, "Synthetic faces to fit.", lower_bound=1)
flags.DEFINE_integer("fit_size", 0, "Image size of the fits (0 = --image_size).",
                     lower_bound=0)
flags.DEFINE_integer("prior_seed", 1000, "Seed of the synthetic faces (keep it apart from "
                     "the training data's).")
flags.adopt_module_key_flags(train_flags)
FLAGS = flags.FLAGS


def run(config):
  print(json.dumps(stages.build_prior(config, FLAGS.out, num_faces=FLAGS.num_faces,
                                      size=FLAGS.fit_size, seed=FLAGS.prior_seed), indent=1))


main = train_flags.main_for("pretrain", run)


if __name__ == "__main__":
  app.run(main)
