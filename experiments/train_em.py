r"""Stage 4 of FOCUS: joint EM training of encoder and UNet.

Alternating blocks: --em_unet_steps UNet steps (encoder frozen; area, binary,
preserve, dist, neighbour terms) then --em_encoder_steps encoder steps (UNet frozen;
masked reconstruction, perceptual, regularisation, landmarks, area). Both networks
start from --init_from (the train_unet.py run, which holds the stage-1 encoder and
the pre-trained UNet).

Example::

    python experiments/train_em.py --flagfile=experiments/configs/tiny.flags \
        --data_dir=/tmp/synth --init_from=/tmp/focus/unet --workdir=/tmp/focus/em \
        --num_steps=40
"""

from absl import app

from focus_jax.train import flags as train_flags
from focus_jax.train import trainer

train_flags.define_config_flags()
train_flags.define_run_flags(init_from=True)
train_flags.flags.adopt_module_key_flags(train_flags)
FLAGS = train_flags.flags.FLAGS


def run(config):
  print(trainer.train(config, FLAGS.workdir, FLAGS.data_dir, split=FLAGS.split,
                      init_from=FLAGS.init_from).step, "steps done")


main = train_flags.main_for("em", run)


if __name__ == "__main__":
  app.run(main)
