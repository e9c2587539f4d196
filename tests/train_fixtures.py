"""pytest fixtures shared by the default-run training tests (resume, devices, bf16,
experiments end to end, fit from a checkpoint).

Import the fixtures a module uses by name (pytest finds them in the module's
namespace). pytest then holds one copy of a "session" fixture per importing module, so
the expensive ones build their result once per session through :func:`_once` and the
other modules get the same folders. Every fixture compiles through one persistent compilation cache per
session (:func:`tests.train_setup.compilation_cache`), which the subprocesses share
(:func:`tests.train_setup.subprocess_env`): a step function of the micro
configuration is compiled once, whichever test or process needs it first.
"""

import pytest

from tests import train_setup

_BUILT = {}


def _once(tmp_path_factory, name, build):
  """``build()`` the first time a session asks for ``name``; its result after that."""
  key = (str(tmp_path_factory.getbasetemp()), name)
  if key not in _BUILT:
    _BUILT[key] = build()
  return _BUILT[key]


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
  return _once(tmp_path_factory, "jax_cache_dir",
               lambda: tmp_path_factory.mktemp("train_jax_cache"))


@pytest.fixture(scope="module")
def compile_cache(jax_cache_dir):
  """The session's persistent compilation cache, on for a module's tests."""
  with train_setup.compilation_cache(jax_cache_dir):
    yield jax_cache_dir


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory, jax_cache_dir):
  """5 synthetic 32² faces (train split; experiments/make_synthetic.py): 2 batches of
  2 per epoch, one face dropped."""
  def build():
    out = tmp_path_factory.mktemp("micro_faces")
    train_setup.run_script("make_synthetic.py", f"--out={out}", "--num=5", "--size=32",
                           "--splits=1,0,0", "--batch=5", "--nomaps", "--model=builtin",
                           cache=jax_cache_dir, micro_flags=False)
    return out

  return _once(tmp_path_factory, "micro_data", build)


@pytest.fixture(scope="session")
def micro_runs(tmp_path_factory, micro_data, jax_cache_dir):
  """Uninterrupted micro runs of every stage, chained as the pipeline chains them.

  Returns a dict of run directories: ``pretrain`` (5 steps, checkpoints at 2, 4, 5),
  ``pseudo`` (its pseudo
  masks), ``unet`` (4 steps from ``pretrain``), ``em`` (6 steps from ``unet``: UNet
  steps 1-2 and 6, encoder steps 3-5); and ``results``: stage -> TrainResult.
  """
  return _once(tmp_path_factory, "micro_runs",
               lambda: _micro_runs(tmp_path_factory, micro_data, jax_cache_dir))


def _micro_runs(tmp_path_factory, micro_data, jax_cache_dir):
  from focus_jax.train import stages, trainer  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("micro_runs")
  d = {name: root / name for name in ("pretrain", "pseudo", "unet", "em")}
  results = {}
  with train_setup.compilation_cache(jax_cache_dir):
    results["pretrain"] = trainer.train(train_setup.micro(stage="pretrain", num_steps=5,
                                                          checkpoint_every=2),
                                        str(d["pretrain"]), str(micro_data))
    stages.make_pseudo_masks(train_setup.micro(stage="pretrain"), str(d["pseudo"]),
                             str(micro_data), str(d["pretrain"]))
    results["unet"] = trainer.train(train_setup.micro(stage="unet", num_steps=4),
                                    str(d["unet"]), str(micro_data),
                                    init_from=str(d["pretrain"]), pseudo_dir=str(d["pseudo"]))
    results["em"] = trainer.train(train_setup.micro(stage="em", num_steps=6), str(d["em"]),
                                  str(micro_data), init_from=str(d["unet"]))
  return dict(d, results=results, data=micro_data)


@pytest.fixture(scope="session")
def astronaut_dir(tmp_path_factory):
  """``make()`` -> a new folder holding only ``astronaut.png`` (scikit-image's 512²
  portrait, a real photo)."""
  data = pytest.importorskip("skimage.data")
  import imageio.v3 as iio  # pylint: disable=import-outside-toplevel
  image = data.astronaut()

  def make():
    folder = tmp_path_factory.mktemp("astronaut")
    iio.imwrite(folder / "astronaut.png", image)
    return folder

  return make
