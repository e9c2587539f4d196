r"""All FOCUS stages in one command, for one configuration and data directory.

[misfit prior] → stage 1 encoder pre-training → stage 2 pseudo masks → stage 3
UNet pre-training → stage 4 joint EM → [test-time adaptation on --target_dir].
Run directories: WORKDIR/{prior,pretrain,pseudo,unet,em,adapt}; rerunning the
command resumes every stage from its checkpoints. Step counts per stage:
--pretrain_steps, --unet_steps, --em_steps, --adapt_steps, by default the flag file's
--pretrain_num_steps, --unet_num_steps, --em_num_steps, --adapt_num_steps (tiny.flags:
40, 30, 40, 16; paper.flags: the reference's 300000 and 30000, then 120000 and 30000);
--num_steps is unused.

Example (the whole tiny pipeline on synthetic data, minutes on a CPU)::

    python experiments/make_synthetic.py --out /tmp/synth --num 64 --size 64
    python experiments/run_pipeline.py --flagfile=experiments/configs/tiny.flags \
        --data_dir=/tmp/synth --workdir=/tmp/focus
"""

import json

from absl import app, flags

from focus_jax.train import flags as train_flags
from focus_jax.train import stages

train_flags.define_config_flags()
train_flags.define_run_flags(init_from=False)
flags.DEFINE_integer("pretrain_steps", None, "Stage-1 encoder steps (default "
                     "--pretrain_num_steps).", lower_bound=1)
flags.DEFINE_integer("unet_steps", None, "Stage-3 UNet steps (default --unet_num_steps).",
                     lower_bound=1)
flags.DEFINE_integer("em_steps", None, "Stage-4 EM steps, UNet and encoder blocks together "
                     "(default --em_num_steps).", lower_bound=1)
flags.DEFINE_integer("adapt_steps", None, "Test-time adaptation steps with --target_dir "
                     "(default --adapt_num_steps).", lower_bound=1)
flags.DEFINE_string("target_dir", None, "Optional target set for test-time adaptation.")
flags.DEFINE_integer("prior_faces", 0, "Synthetic fits for the misfit prior (0 = no prior); "
                     "it then shapes the pseudo masks and the EM UNet losses (--unet_prior).",
                     lower_bound=0)
flags.adopt_module_key_flags(train_flags)
FLAGS = flags.FLAGS


def run(config):
  steps = dict(pretrain=FLAGS.pretrain_steps, unet=FLAGS.unet_steps, em=FLAGS.em_steps,
               adapt=FLAGS.adapt_steps)
  print(json.dumps(stages.run_pipeline(config, FLAGS.workdir, FLAGS.data_dir, steps=steps,
                                       target_dir=FLAGS.target_dir,
                                       prior_faces=FLAGS.prior_faces, split=FLAGS.split),
                   indent=1, default=str))


main = train_flags.main_for("pretrain", run)


if __name__ == "__main__":
  app.run(main)
