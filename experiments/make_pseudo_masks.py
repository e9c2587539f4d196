r"""Stage 2 of FOCUS: pseudo masks from the pre-trained encoder.

For every training image, the encoder's render is compared with the image by the
robust likelihood; the pixels where the Gaussian foreground beats the uniform
outlier model (optionally with the misfit prior's σ map, --prior) are the pseudo
inlier mask. Writes OUT/pseudo_masks_p<process>.npz, OUT/tile.png, OUT/summary.json.

Example::

    python experiments/make_pseudo_masks.py --flagfile=experiments/configs/tiny.flags \
        --data_dir=/tmp/synth --init_from=/tmp/focus/pretrain --workdir=/tmp/focus/pseudo
"""

import json

from absl import app, flags

from focus_jax.train import flags as train_flags
from focus_jax.train import stages

train_flags.define_config_flags()
train_flags.define_run_flags(init_from=False)
flags.DEFINE_string("init_from", None, "--workdir of the stage-1 (train_encoder.py) run.",
                    required=True)
flags.DEFINE_string("prior", None, "Optional misfit prior (.npz from build_prior.py).")
flags.adopt_module_key_flags(train_flags)
FLAGS = flags.FLAGS


def run(config):
  print(json.dumps(stages.make_pseudo_masks(config, FLAGS.workdir, FLAGS.data_dir,
                                            FLAGS.init_from, split=FLAGS.split,
                                            prior_path=FLAGS.prior), indent=1))


main = train_flags.main_for("pretrain", run)


if __name__ == "__main__":
  app.run(main)
