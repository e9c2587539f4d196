r"""Converts any supported morphable-model file to focus-jax's lossless .npz.

Loading a Basel Face Model 2017 .h5 crops and rescales ~53k vertices each time; the
.npz written here loads in a fraction of the time and records the choices made
(crop, truncation, landmark table).

Example::

    python experiments/export_model.py --model model2017-1_bfm_nomouth.h5 \
        --num_shape 80 --num_expression 64 --num_albedo 80 --out bfm2017_face.npz
"""

import sys

from absl import app, flags

from focus_jax import errors, morphable

_MODEL = flags.DEFINE_string("model", None, "Input model: BFM 2017 .h5, BFM 2009 / Deep3D "
                             ".mat, eos .bin or focus-jax .npz.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output .npz path.", required=True)
_LANDMARKS = flags.DEFINE_string("landmarks", None, "iBUG-68 table (eos ibug_to_*.txt) on the "
                                 "file's full mesh; default: a table next to the model file.")
_NUM_SHAPE = flags.DEFINE_integer("num_shape", None, "Keep the first k shape components "
                                  "(FOCUS: 80). Default: all.", lower_bound=0)
_NUM_EXPRESSION = flags.DEFINE_integer("num_expression", None, "Keep the first k expression "
                                       "components (FOCUS: 64). Default: all.", lower_bound=0)
_NUM_ALBEDO = flags.DEFINE_integer("num_albedo", None, "Keep the first k albedo components "
                                   "(FOCUS: 80). Default: all.", lower_bound=0)
_FULL_HEAD = flags.DEFINE_bool("full_head", False, "BFM files: keep the whole mesh instead of "
                               "the default face crop.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = {"crop": None} if _FULL_HEAD.value else {}
  try:
    model = morphable.load(_MODEL.value, landmarks=_LANDMARKS.value,
                           num_shape=_NUM_SHAPE.value, num_expression=_NUM_EXPRESSION.value,
                           num_albedo=_NUM_ALBEDO.value, **options)
  except TypeError as e:  # e.g. --full_head on an eos file
    raise app.UsageError(f"--model {_MODEL.value}: {e}") from e
  except errors.FocusError as e:
    sys.exit(f"error: {e}")
  morphable.save(model, _OUT.value)
  print(f"wrote {_OUT.value}: {model}")


if __name__ == "__main__":
  app.run(main)
