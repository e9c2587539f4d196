r"""Test-time adaptation: a few EM iterations on a target set, then its fits and masks.

Starts both networks from --init_from (a train_em.py run), runs EM blocks (same
losses and schedule flags as train_em.py; with --adapt_continue, as paper.flags sets,
the EM run's global step continues: its place in the EM cycle and, with
--em_lr_schedule=reference, its learning rates, as the reference's adaptation) on --data_dir (e.g. a folder of real
photos: landmarks are detected with dlib and cached), and writes
WORKDIR/export/predictions.npz (names, inlier masks, face masks, landmarks) and
WORKDIR/export/tile.png (rows: input | fit overlay | mask | masked input).

Example::

    python experiments/adapt.py --flagfile=experiments/configs/tiny.flags \
        --data_dir=../shared/data/occluded_faces --init_from=/tmp/focus/em \
        --workdir=/tmp/focus/adapt --num_steps=16
"""

import json
import os

from absl import app

from focus_jax.train import flags as train_flags
from focus_jax.train import stages, trainer

train_flags.define_config_flags()
train_flags.define_run_flags(init_from=True)
train_flags.flags.adopt_module_key_flags(train_flags)
FLAGS = train_flags.flags.FLAGS


def run(config):
  trainer.train(config, FLAGS.workdir, FLAGS.data_dir, split=FLAGS.split,
                init_from=FLAGS.init_from)
  print(json.dumps(stages.export_predictions(config, FLAGS.workdir, FLAGS.data_dir,
                                             os.path.join(FLAGS.workdir, "export"),
                                             split=FLAGS.split), indent=1))


main = train_flags.main_for("adapt", run)


if __name__ == "__main__":
  app.run(main)
