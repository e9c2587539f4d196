r"""Stage 1 of FOCUS: pre-train the encoder with the occlusion-robust loss.

Loss: robust photometric likelihood (Gaussian foreground, σ = 0.043, against a
uniform outlier at 3σ) + weighted 68-landmark loss + perceptual identity loss
(--identity) + coefficient regularisation (weights --w_photo, --w_landmark,
--w_perceptual, --w_reg). Resumes automatically from --workdir's newest checkpoint.

Example (tiny configuration, synthetic data)::

    python experiments/make_synthetic.py --out /tmp/synth --num 64 --size 64
    python experiments/train_encoder.py --flagfile=experiments/configs/tiny.flags \
        --data_dir=/tmp/synth --workdir=/tmp/focus/pretrain --num_steps=40
"""

from absl import app

from focus_jax.train import flags as train_flags
from focus_jax.train import trainer

train_flags.define_config_flags()
train_flags.define_run_flags(init_from=False)
train_flags.flags.adopt_module_key_flags(train_flags)
FLAGS = train_flags.flags.FLAGS


def run(config):
  print(trainer.train(config, FLAGS.workdir, FLAGS.data_dir, split=FLAGS.split).step,
        "steps done")


main = train_flags.main_for("pretrain", run)


if __name__ == "__main__":
  app.run(main)
