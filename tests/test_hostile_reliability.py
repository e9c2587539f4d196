"""Hostile inputs to ``focus-jax fit``, the model loaders and training resumption.

Each case was seen to fail on the code before issue 17's fixes: black/white photos
fitted to NaN, one bad photo aborted a whole batch, ``--out`` was only checked
after the work, a fit picked up its own outputs, a photo's files could be left
as a mixed set, models with NaN loaded, a corrupt newest checkpoint made the run
fail at its step, and a resumed run logged its steps twice.
"""

import csv
import dataclasses
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io
from absl import flags
from absl.testing import flagsaver

from focus_jax import fitting, morphable, obj_io
from focus_jax.app import inference
from focus_jax.commands import fit as fit_cmd
from focus_jax.data import align as align_lib
from focus_jax.data import landmarks as lm_lib
from focus_jax.errors import DataError, FocusError, ModelFileError
from focus_jax.render import camera, shading
from tests import face_scenes

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(size=64, iterations=10, fit_batch=1)   # as tests/test_cli_fit.py


# ----------------------------------------------------------------------------- NaN causes


def test_solve_light_black_target_and_zero_weights_stay_finite():
  rng = np.random.default_rng(0)
  normals = rng.normal(size=(50, 3))
  normals[:, 2] = np.abs(normals[:, 2])
  normals = jnp.asarray(normals / np.linalg.norm(normals, axis=1, keepdims=True), jnp.float32)
  albedo = jnp.full((50, 3), 0.6, jnp.float32)
  for target, weight in ((0.0, 1.0), (1.0, 0.0), (0.0, 0.0)):
    for tint_ridge in (0.0, 1.0):
      g, t = fitting.solve_light(albedo, normals, jnp.full((50, 3), target, jnp.float32),
                                 jnp.full((50,), weight, jnp.float32), 1e-3, 0.13, 2,
                                 tint_ridge=tint_ridge)
      assert np.isfinite(np.asarray(g)).all() and np.isfinite(np.asarray(t)).all()
      np.testing.assert_allclose(t, 1.0)    # no colour information: a white tint
      if target == 0.0 and weight:          # a black face is explained by (almost) no light
        colors = shading.shade(albedo, normals, fitting.light_from_factors(g, t))
        assert float(jnp.abs(colors).mean()) < 0.05 and float(jnp.abs(colors).max()) < 0.15


# ----------------------------------------------------------------------------- fit: set-up


@pytest.fixture(scope="module", autouse=True)
def parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("model") / "small.npz"
  morphable.save(face_scenes.small_model(), path)
  return str(path)


@pytest.fixture(scope="module")
def scenes():
  return {f"face{i}": face_scenes.face_photo(height=h, width=w, shape_seed=i)
          for i, (h, w) in enumerate([(64, 64), (72, 80)])}


def _uint8(image):
  return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_folder(root, scenes, extra=(), good=("face0",)):
  """A folder of photos and its landmark CSV.

  extra: (relative name, image [H, W, 3] float, landmarks [68, 2] or None = no row).
  Returns (folder, csv path).
  """
  folder = Path(root) / "photos"
  rows, lms = [], []
  for name in good:
    extra = [(f"{name}.png", scenes[name]["image"], scenes[name]["landmarks"])] + list(extra)
  for rel, image, lm in extra:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, _uint8(image), extension=".png")
    if lm is not None:
      rows.append(rel)
      lms.append(lm)
  csv = Path(root) / "landmarks.csv"
  lm_lib.write_landmarks_csv(csv, rows, np.stack(lms), decimals=3)
  return folder, str(csv)


def run_fit(args, **values):
  with flagsaver.flagsaver(**{**FAST, **values}):
    fit_cmd.main([str(a) for a in args])


def five_files(name):
  return {f"{name}{s}" for s in (".obj", "_params.npz", "_render.png", "_mask.png",
                                 "_landmarks.csv")}


def assert_complete_and_finite(out, name, h_w=None):
  for f in five_files(name):
    assert (out / f).is_file(), f
  verts, _ = obj_io.read_obj(out / f"{name}.obj")
  assert np.isfinite(verts).all()
  with np.load(out / f"{name}_params.npz") as p:
    for k in ("shape", "expression", "albedo", "angles", "translation", "light",
              "vertices_camera", "inlier_fraction"):
      assert np.isfinite(p[k]).all(), k
  if h_w is not None:
    assert iio.imread(out / f"{name}_render.png").shape[:2] == h_w


# ----------------------------------------------------------------------------- fit: non-finite


def test_black_and_white_photos_fit_to_finite_results(scenes, model_file, tmp_path):
  lm = scenes["face0"]["landmarks"]
  black, white = np.zeros((64, 64, 3)), np.ones((64, 64, 3))
  folder, csv = make_folder(tmp_path, scenes, [("black.png", black, lm), ("white.png", white, lm)])
  out = tmp_path / "out"
  run_fit([folder], out=str(out), model=model_file, landmarks=csv)
  for name in ("black", "white", "face0"):
    assert_complete_and_finite(out, name, (64, 64))
    # With no usable colour the landmarks still place the face.
    fitted = lm_lib.read_landmarks_csv(out / f"{name}_landmarks.csv").landmarks[0]
    assert np.nanmedian(np.linalg.norm(fitted - lm, axis=1)) < 3.0, name


# ----------------------------------------------------------------------------- fit: per-photo failures


class _FakeDetector:
  """Stands in for dlib: returns fixed landmarks for any photo."""

  def __init__(self, landmarks):
    self.landmarks = landmarks

  def detect(self, photo):
    return types.SimpleNamespace(landmarks=self.landmarks, method="fake")


def _bad_photo(kind, scenes, out, monkeypatch):
  """(relative name, image, CSV landmarks or None, expected words in its message)."""
  s = scenes["face0"]
  image, lm = s["image"], s["landmarks"]
  if kind == "coincident":          # align.similarity's ValueError
    return "a_same.png", image, np.full((68, 2), 10.0), "align"
  if kind == "huge":                # landmarks x 1e30
    return "a_huge.png", image, lm * 1e30, "outside"
  if kind == "off_image":
    return "a_off.png", image, lm + 5000.0, "outside"
  if kind == "comma":               # the landmark CSV cannot hold the name
    monkeypatch.setattr(inference, "default_detector",
                        lambda crop_fallback=False: _FakeDetector(lm))
    return "a,b.png", image, None, "comma"
  if kind == "write_error":         # its output folder cannot be created
    out.mkdir()
    (out / "a_blocked").write_text("a file where a folder is needed")
    return "a_blocked/x.png", image, lm, "write"
  if kind == "not_finite":          # the guard: a result that is not finite is never written
    fit_batch = inference.Reconstructor._fit

    def poisoned(self, preps):
      res = fit_batch(self, preps)
      for p, r in zip(preps, res):
        if "a_nan" in p.name:
          r["vertices"] = r["vertices"] * np.nan
      return res
    monkeypatch.setattr(inference.Reconstructor, "_fit", poisoned)
    return "a_nan.png", image, lm, "not finite"
  raise ValueError(kind)


@pytest.mark.parametrize("kind", ["coincident", "huge", "off_image", "comma", "write_error",
                                  "not_finite"])
def test_one_failing_photo_is_reported_on_one_line_and_skipped(kind, scenes, model_file,
                                                               tmp_path, capsys, monkeypatch):
  out = tmp_path / "out"
  rel, image, lm, words = _bad_photo(kind, scenes, out, monkeypatch)
  # The bad photo sorts first: an abort would lose the good one.
  folder, csv = make_folder(tmp_path, scenes, [(rel, image, lm)])
  with pytest.raises(FocusError, match="1 of 2 images failed"):
    run_fit([folder], out=str(out), model=model_file, landmarks=csv)
  err = capsys.readouterr().err
  assert "Traceback" not in err
  err = [l for l in err.splitlines() if l.startswith("focus-jax fit")]
  bad = str(folder / rel)
  assert len(err) == 1 and bad in err[0] and words in err[0].lower(), err
  assert_complete_and_finite(out, "face0", (64, 64))
  stem = os.path.splitext(rel)[0]
  assert not any((out / f).exists() for f in five_files(stem))
  assert not [n for n in os.listdir(out) if n.startswith(".partial")]


def test_failing_batch_is_split_to_find_the_culprit(scenes, model_file, tmp_path, capsys,
                                                    monkeypatch):
  """A batch whose reconstruction raises is retried photo by photo (a stand-in fit:
  the command's bookkeeping, no compilation)."""

  def fake_fit(self, preps):
    model = self.model
    if any("a_boom" in p.name for p in preps):
      raise RuntimeError("boom\nsecond line of a long message")
    return [dict(face_render=np.zeros(p.crop.shape, np.float32),
                 face=np.zeros(p.crop.shape[:2], np.float32),
                 inlier=np.zeros(p.crop.shape[:2], np.float32), landmarks=p.crop_landmarks,
                 vertices=np.asarray(model.mean) + [0, 0, 1000], vertices_model=np.asarray(
                     model.mean), composite=None,
                 coefficients={k: np.zeros(3, np.float32) for k in ("shape", "angles")})
            for p in preps]

  monkeypatch.setattr(inference.Reconstructor, "_fit", fake_fit)
  s = scenes["face0"]
  folder, csv = make_folder(tmp_path, scenes, [("a_boom.png", s["image"], s["landmarks"])],
                            good=("face0", "face1"))
  out = tmp_path / "out"
  with pytest.raises(FocusError, match="1 of 3 images failed"):
    run_fit([folder], out=str(out), landmarks=csv, fit_batch=2, model=model_file)
  err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("focus-jax fit")]
  assert len(err) == 1 and "a_boom.png" in err[0] and "RuntimeError: boom" in err[0], err
  assert five_files("face0") | five_files("face1") == set(os.listdir(out))


# ----------------------------------------------------------------------------- fit: --out


def _deny_writes_as_if_not_root(monkeypatch):
  """Tests run as root, whom file modes do not stop: judge W_OK by the owner's bits,
  as the kernel does for the owner of a folder."""
  if os.geteuid() != 0:
    return
  real = os.access

  def access(path, mode, **kw):
    if mode & os.W_OK and os.path.exists(path) and not os.stat(path).st_mode & stat.S_IWUSR:
      return False
    return real(path, mode, **kw)
  monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("case", ["file", "not_writable", "read_only_parent"])
def test_out_is_checked_before_any_work(case, scenes, model_file, tmp_path, capsys,
                                        monkeypatch):
  folder, csv = make_folder(tmp_path, scenes)
  if case == "file":
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
  elif case == "not_writable":
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
  else:
    parent = tmp_path / "ro_parent"
    parent.mkdir()
    out = parent / "out"
    parent.chmod(0o555)
  _deny_writes_as_if_not_root(monkeypatch)

  def no_work(*_, **__):
    raise AssertionError("the fit started before --out was checked")
  monkeypatch.setattr(fit_cmd, "make_reconstructor", no_work)
  try:
    with pytest.raises(SystemExit) as exit_info:
      run_fit([folder], out=str(out), model=model_file, landmarks=csv)
  finally:
    for p in (tmp_path / "ro", tmp_path / "ro_parent"):
      if p.exists():
        p.chmod(0o755)
  assert exit_info.value.code == 2
  lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("focus-jax fit: error: --out") \
      and str(out) in lines[0], lines


def test_console_out_is_a_file_exits_2(scenes, model_file, tmp_path):
  folder, _ = make_folder(tmp_path, scenes)
  out = tmp_path / "taken"
  out.write_text("x")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  r = subprocess.run([sys.executable, "-m", "focus_jax.cli", "fit", str(folder), f"--out={out}",
                      f"--model={model_file}"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1, (r.returncode, lines)
  assert lines[0] == f"focus-jax fit: error: --out {out}: exists and is not a folder"


# ----------------------------------------------------------------------------- fit: own outputs


def test_fit_on_a_folder_does_not_pick_up_its_own_outputs(scenes, model_file, tmp_path):
  folder, csv = make_folder(tmp_path, scenes, good=("face0", "face1"))
  out = folder / "out"
  out.mkdir()
  # What an earlier run into the same --out left there.
  for suffix in ("_render.png", "_mask.png"):
    (out / f"face0{suffix}").write_bytes((folder / "face0.png").read_bytes())
  run_fit([folder], out=str(out), model=model_file, landmarks=csv)
  assert set(os.listdir(out)) == five_files("face0") | five_files("face1")


# ----------------------------------------------------------------------------- fit: one set of files


def test_a_folder_in_the_way_leaves_the_old_set_untouched(scenes, model_file, tmp_path, capsys):
  folder, csv = make_folder(tmp_path, scenes, good=("face0", "face1"))
  out = tmp_path / "out"
  out.mkdir()
  (out / "face0.obj").write_text("old mesh")
  (out / "face0_render.png").mkdir()             # cannot be replaced by a file
  with pytest.raises(FocusError, match="1 of 2 images failed"):
    run_fit([folder], out=str(out), model=model_file, landmarks=csv)
  err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("focus-jax fit")]
  assert len(err) == 1 and "face0.png" in err[0] and "face0_render.png" in err[0], err
  assert (out / "face0.obj").read_text() == "old mesh"
  assert not (out / "face0_params.npz").exists()
  assert_complete_and_finite(out, "face1", (72, 80))


def fake_reconstruction(offset: float, size: int = 32):
  """A small Reconstruction whose every array carries ``offset`` (no fit needed)."""
  model = face_scenes.small_model()
  s = face_scenes.face_photo(height=size, width=size)
  al = align_lib.estimate(s["landmarks"], (size, size), size=size)
  v = np.asarray(model.mean, np.float32) + np.array([0, 0, 1000 + offset], np.float32)
  mask = np.zeros((size, size), bool)
  mask[: int(offset) % size] = True
  return inference.Reconstruction(
      render=np.full((size, size, 3), (offset % 7) / 7, np.float32), inlier_mask=mask,
      face_mask=mask, landmarks=s["landmarks"] + offset, input_landmarks=s["landmarks"],
      landmark_source="given", vertices=v, vertices_model=v, triangles=np.asarray(
          model.triangles), uv=None, coefficients=dict(shape=np.full(3, offset, np.float32)),
      alignment=al, intrinsics=camera.Intrinsics.reference(size), crop=s["image"],
      crop_render=s["image"], crop_inlier=mask.astype(np.float32), method="fit", name="face")


def set_offset(folder, name):
  """The ``offset`` of each of a written set's five files (one value if consistent)."""
  folder = Path(folder)
  verts, _ = obj_io.read_obj(folder / f"{name}.obj")
  with np.load(folder / f"{name}_params.npz") as p:
    from_params = float(p["shape"][0])
  render = iio.imread(folder / f"{name}_render.png")
  mask = iio.imread(folder / f"{name}_mask.png")
  table = lm_lib.read_landmarks_csv(folder / f"{name}_landmarks.csv")
  base = face_scenes.face_photo(height=32, width=32)["landmarks"]
  return dict(mesh=round(float(verts[:, 2].mean() - np.asarray(
                  face_scenes.small_model().mean)[:, 2].mean() - 1000)),
              params=round(from_params), render=int(round(render[0, 0, 0] / 255 * 7)),
              mask=int((mask[:, 0] > 0).sum()),
              landmarks=round(float(np.nanmedian(table.landmarks[0] - base))))


def _consistent(offsets, offset):
  return offsets == dict(mesh=offset, params=offset, render=offset % 7, mask=offset % 32,
                         landmarks=offset)


def test_two_writers_of_one_name_leave_one_consistent_set(tmp_path, monkeypatch):
  a, b = fake_reconstruction(3), fake_reconstruction(12)
  real_replace = os.replace
  names = sorted(five_files("face"))
  # The worst case for two unsynchronised writers: their renames into the output
  # folder take turns, in opposite orders on alternate files. A writer whose turn
  # does not come within 2 s (the other one waits for the folder) goes on alone.
  order = [(w, k) for k in range(len(names)) for w in (("a", "b") if k % 2 == 0
                                                        else ("b", "a"))]
  turns = threading.Condition()
  state = {}

  def taking_turns(src, dst):
    if (os.path.dirname(os.path.abspath(dst)) != state["out"]
        or os.path.basename(dst).startswith(".")):
      return real_replace(src, dst)
    me = (threading.current_thread().name, names.index(os.path.basename(dst)))
    with turns:
      if not state["free"] and not turns.wait_for(
          lambda: state["free"] or order[state["next"]] == me, timeout=2.0):
        state["free"] = True
      real_replace(src, dst)
      state["next"] += 1
      turns.notify_all()
  monkeypatch.setattr(os, "replace", taking_turns)
  for trial in range(2):
    out = tmp_path / f"out{trial}"
    state.update(out=os.path.abspath(out), next=0, free=False)
    threads = [threading.Thread(target=inference.write_outputs, args=(r, str(out), "face"),
                                name=n) for n, r in (("a", a), ("b", b))]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    offsets = set_offset(out, "face")
    assert _consistent(offsets, 3) or _consistent(offsets, 12), offsets
    assert sorted(os.listdir(out)) == names


_CRASH = """
import os, signal, sys
sys.path.insert(0, {root!r})
from focus_jax.app import inference
from tests.test_hostile_reliability import fake_reconstruction
out = {out!r}
inference.write_outputs(fake_reconstruction(3), out, "face")      # the old, complete set
real, done = os.replace, []
def dying_replace(src, dst):
  real(src, dst)
  if os.path.dirname(os.path.abspath(dst)) == os.path.abspath(out):
    done.append(dst)
    if len(done) == 2:
      os.kill(os.getpid(), signal.SIGKILL)       # a crash after two of the five files
os.replace = dying_replace
inference.write_outputs(fake_reconstruction(12), out, "face")
"""


def test_a_crash_mid_write_is_completed_by_the_next_write(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  r = subprocess.run([sys.executable, "-c", _CRASH.format(root=str(ROOT), out=str(out))],
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
  # The next write into that folder finds the interrupted set and completes it.
  inference.write_outputs(fake_reconstruction(20), str(out), "other")
  assert _consistent(set_offset(out, "face"), 12), set_offset(out, "face")
  assert _consistent(set_offset(out, "other"), 20)
  assert sorted(os.listdir(out)) == sorted(five_files("face") | five_files("other"))


def test_recover_never_moves_files_out_of_the_folder(tmp_path):
  """A COMMIT list naming '../x' or 'sub/x' (a hostile or damaged staging folder) moves
  nothing outside the output folder; plain names are still completed."""
  from focus_jax import file_sets  # pylint: disable=import-outside-toplevel
  out = tmp_path / "out"
  staging = out / (file_sets.STAGING_PREFIX + "x")
  (staging / "sub").mkdir(parents=True)
  for name in ("ok.txt", "sub/deep.txt"):
    (staging / name).write_text(name)
  (out / "victim.txt").write_text("keep me here")   # what '../victim.txt' resolves to
  (staging / "COMMIT").write_text("../victim.txt\nok.txt\nsub/deep.txt\n..\n")
  file_sets.recover(str(out))
  assert not (tmp_path / "victim.txt").exists()
  assert (out / "victim.txt").read_text() == "keep me here"
  assert (out / "ok.txt").read_text() == "ok.txt"
  assert sorted(os.listdir(out)) == ["ok.txt", "victim.txt"]


def test_non_finite_reconstruction_is_never_written(tmp_path):
  bad = dataclasses.replace(fake_reconstruction(3), vertices=np.full((5, 3), np.nan))
  with pytest.raises(DataError, match="not finite"):
    inference.write_outputs(bad, str(tmp_path / "out"), "face")
  assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


# ----------------------------------------------------------------------------- model loaders


def _bfm2009_mat(path, nan_in):
  from tests.test_bfm_loaders import _bfm2009_variables, _synthetic_head
  verts, tris = _synthetic_head()
  rng = np.random.default_rng(0)
  v = len(verts)
  q = lambda k: np.linalg.qr(rng.normal(size=(3 * v, k)))[0]
  head = dict(verts=verts, tris=tris, shape_u=q(3), shape_var=np.array([900.0, 400.0, 100.0]),
              color_u=q(2), color_var=np.array([2.0, 1.0]),
              color_mean=rng.uniform(0.3, 0.8, size=(v, 3)))
  variables = _bfm2009_variables(head)
  variables[nan_in][5] = np.nan
  scipy.io.savemat(path, variables)


@pytest.mark.parametrize("case", ["npz_mean", "npz_shape_basis", "npz_albedo", "bfm2009",
                                  "eos"])
def test_model_with_non_finite_values_is_refused(case, tmp_path):
  model = face_scenes.small_model()
  if case.startswith("npz"):
    path = tmp_path / "model.npz"
    field = case[4:]
    arrays = {k: np.array(getattr(model, k)) for k in ("mean", "shape_basis", "albedo_mean")}
    key = dict(mean="mean", shape_basis="shape_basis", albedo="albedo_mean")[field]
    arrays[key].reshape(-1)[7] = np.inf if field == "shape_basis" else np.nan
    morphable.save(model.replace(**{k: jnp.asarray(a) for k, a in arrays.items()}), path)
    what = key
  elif case == "bfm2009":
    path = tmp_path / "01_MorphableModel.mat"
    _bfm2009_mat(path, "shapePC")
    what = "shape_basis"
  else:
    from tests.test_eos_loader import _write_v1_model
    path = tmp_path / "model.bin"
    mean = np.random.default_rng(0).normal(size=(5, 3)) * 50
    mean[2, 1] = np.nan
    basis = np.linalg.qr(np.random.default_rng(1).normal(size=(15, 2)))[0].T
    _write_v1_model(path, mean, basis, [9.0, 4.0], [[0, 1, 2], [2, 1, 3]])
    what = "mean"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")                      # scale / landmark-table warnings
    with pytest.raises(ModelFileError) as info:
      morphable.load(path)
  message = str(info.value)
  # (eos files were already refused by their own reader, in its words.)
  assert str(path) in message and what in message, message
  assert "not finite" in message or "NaN or infinite" in message, message
  assert "\n" not in message


# ----------------------------------------------------------------------------- training resumption


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  from focus_jax.data import synthetic
  out = tmp_path_factory.mktemp("tiny_faces")
  gen = synthetic.SyntheticFaces(morphable.builtin(resolution=37),
                                 synthetic.SyntheticConfig(size=32), seed=0, batch_size=8)
  synthetic.write_dataset(str(out), gen, 8, progress=False, save_maps=False)
  return out


@pytest.fixture
def cheap_training(monkeypatch):
  """The tiny stage-1 run with a cheap stand-in loss (same plumbing, seconds to compile)."""
  from focus_jax.train import config as config_lib
  from focus_jax.train import steps as steps_lib

  def cheap_loss(config, nets, params, state, batch, model, identity, rng):
    total = sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(params)) * 1e-3
    total = total + 0.0 * jnp.mean(batch["image"])
    return total, dict(photometric=total), dict(encoder=state.encoder["batch_stats"])

  monkeypatch.setitem(steps_lib._LOSSES, "pretrain", cheap_loss)
  return config_lib.tiny(num_steps=6, checkpoint_every=2, log_every=1, image_every=100,
                         image_size=32, batch_size=2, progress=False)


def _csv_steps(workdir):
  with open(Path(workdir) / "metrics.csv", newline="") as f:
    return [int(r["step"]) for r in csv.DictReader(f)]


def test_resumed_run_logs_each_step_once(tiny_data, cheap_training, tmp_path):
  from focus_jax.train import trainer
  run = tmp_path / "run"
  # "Killed" after step 5: checkpoints at 2 and 4, metrics logged up to 5.
  trainer.train(cheap_training, str(run), str(tiny_data), stop_after=5)
  assert _csv_steps(run) == [1, 2, 3, 4, 5]
  result = trainer.train(cheap_training, str(run), str(tiny_data))
  assert result.resumed_from == 4 and result.step == 6
  assert _csv_steps(run) == [1, 2, 3, 4, 5, 6]


def test_corrupt_newest_checkpoint_is_moved_aside_and_the_run_finishes(
    tiny_data, cheap_training, tmp_path):
  from focus_jax.autoencoder import checkpoints as ckpt_io
  from focus_jax.train import trainer
  run = tmp_path / "run"
  trainer.train(cheap_training, str(run), str(tiny_data), stop_after=5)
  ckdir = run / "checkpoints"
  assert sorted(os.listdir(ckdir)) == ["2", "4"]
  for root, _, files in os.walk(ckdir / "4"):
    for f in files:
      Path(root, f).write_bytes(b"garbage")
  with pytest.warns(UserWarning, match=r"moved aside to .*4\.corrupt-"):
    result = trainer.train(cheap_training, str(run), str(tiny_data))
  assert result.resumed_from == 2 and result.step == 6
  names = sorted(os.listdir(ckdir))
  assert [n for n in names if "." not in n] == ["2", "4", "6"]
  assert len([n for n in names if n.startswith("4.corrupt-")]) == 1
  assert _csv_steps(run) == [1, 2, 3, 4, 5, 6]
  # The re-saved step 4 and the final step 6 are readable.
  _, _, _, step = ckpt_io.load_networks(str(run))
  assert step == 6
