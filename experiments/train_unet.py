r"""Stage 3 of FOCUS: pre-train the segmentation UNet on the pseudo masks.

The UNet sees render ⊕ target (the frozen stage-1 encoder's render, black outside
the rendered face) and learns the pseudo masks of make_pseudo_masks.py with binary
cross-entropy over the face pixels (the pseudo masks label only the face region).
The encoder is taken from --init_from (the stage-1 run) and kept frozen.

Example::

    python experiments/train_unet.py --flagfile=experiments/configs/tiny.flags \
        --data_dir=/tmp/synth --init_from=/tmp/focus/pretrain \
        --pseudo_dir=/tmp/focus/pseudo --workdir=/tmp/focus/unet --num_steps=30
"""

from absl import app

from focus_jax.train import flags as train_flags
from focus_jax.train import trainer

train_flags.define_config_flags()
train_flags.define_run_flags(init_from=True, pseudo=True)
train_flags.flags.adopt_module_key_flags(train_flags)
FLAGS = train_flags.flags.FLAGS


def run(config):
  print(trainer.train(config, FLAGS.workdir, FLAGS.data_dir, split=FLAGS.split,
                      init_from=FLAGS.init_from, pseudo_dir=FLAGS.pseudo_dir).step,
        "steps done")


main = train_flags.main_for("unet", run)


if __name__ == "__main__":
  app.run(main)
