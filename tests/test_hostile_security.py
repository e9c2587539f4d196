"""Hostile inputs (issue 17, security): code in a NoW box file, image-list entries that
leave the output folder, .pth tensors that point outside their storage.

Each test failed on the code before the fix: the .npy ran its payload, the list
entries wrote outside --out, the .pth reader returned neighbouring memory or crashed.
"""

import glob
import json
import os
import shlex

import imageio.v3 as iio
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from focus_jax.app import now as now_lib
from focus_jax.app import now_box
from focus_jax.errors import DataError
from focus_jax.nets import convert
from focus_jax.nets.weights import WeightsError
from tests import hostile_files as hf


@pytest.fixture(scope="module", autouse=True)
def parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# ----------------------------------------------------------------------------- NoW boxes


class _RunsShell:
  """Unpickling this runs a shell command (how a crafted detected_face .npy attacks)."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def _evil_box(tmp_path, nested: bool):
  marker = tmp_path / "PWNED"
  payload = _RunsShell(f"touch {shlex.quote(str(marker))}")
  value = dict(left=payload, top=1, right=2, bottom=3) if nested else payload
  path = tmp_path / "detected_face" / "S" / "selfie" / "IMG.npy"
  path.parent.mkdir(parents=True)
  path.write_bytes(hf.npy_bytes(np.array(value, dtype=object)))
  return path, marker


@pytest.mark.parametrize("nested", [False, True], ids=["payload", "payload_in_dict"])
def test_malicious_box_npy_runs_nothing(tmp_path, nested):
  path, marker = _evil_box(tmp_path, nested)
  with pytest.raises(DataError) as info:
    now_box.read_box(str(path))
  assert not marker.exists(), "the .npy's payload ran"
  message = str(info.value)
  assert str(path) in message and "\n" not in message
  assert "system" in message   # names what it refused


def test_boxes_in_the_datasets_format_still_read(tmp_path):
  # The dataset's pickled dict (numpy scalars or plain numbers), a plain [4] array,
  # and what write_box writes (no pickle).
  cases = {"numpy_scalars": dict(left=np.int64(10), top=np.float32(20.5), right=np.int32(110),
                                 bottom=np.float64(140)),
           "python_numbers": dict(left=10, top=20.5, right=110, bottom=140.0)}
  for name, box in cases.items():
    (tmp_path / f"{name}.npy").write_bytes(hf.npy_bytes(np.array(box, dtype=object)))
    assert now_box.read_box(str(tmp_path / f"{name}.npy")) == (10, 20.5, 110, 140)
  np.save(tmp_path / "plain.npy", np.array([10, 20, 110, 140], np.int16))
  assert now_box.read_box(str(tmp_path / "plain.npy")) == (10, 20, 110, 140)
  now_box.write_box(tmp_path / "written.npy", (1, 2, 3, 4))
  assert np.load(tmp_path / "written.npy", allow_pickle=False).dtype != object
  assert now_box.read_box(str(tmp_path / "written.npy")) == (1, 2, 3, 4)


def test_python2_pickled_box_reads(tmp_path):
  # Python 2 numpy wrote scalars' bytes as str (latin-1) and module numpy.core.multiarray.
  def scalar(code, raw):
    return (b"cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nU\x02" + code + b"K\x00K\x01\x87R"
            b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbU" + bytes([len(raw)])
            + raw + b"\x86R")
  items = b"".join(b"U" + bytes([len(k)]) + k + scalar(b"i8", int(v).to_bytes(8, "little"))
                   for k, v in ((b"left", 7), (b"top", 8), (b"right", 200), (b"bottom", 230)))
  payload = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b"
             b"\x87R(K\x01)cnumpy\ndtype\nU\x02O8K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff"
             b"\xffJ\xff\xff\xff\xffK?tb\x89]}(" + items + b"uatb.")
  header = b"{'descr': '|O', 'fortran_order': False, 'shape': (), }"
  header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
  path = tmp_path / "py2.npy"
  path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload)
  assert np.load(path, allow_pickle=True, encoding="latin1").item()["right"] == 200
  assert now_box.read_box(str(path)) == (7, 8, 200, 230)


# ----------------------------------------------------------------------------- NoW lists

TRAVERSALS = ("../../IMG2.jpg", "S/../IMG2.jpg", "./selfie/IMG2.jpg", "S/selfie/..",
              "S/sel\x00fie/IMG2.jpg")


@pytest.mark.parametrize("entry", TRAVERSALS)
def test_image_list_refuses_entries_leaving_the_folder(tmp_path, entry):
  (tmp_path / "list.txt").write_text(f"S/selfie/IMG1.jpg\n{entry}\n")
  with pytest.raises(DataError) as info:
    now_lib.read_image_list(str(tmp_path / "list.txt"))
  message = str(info.value)
  assert "list.txt, line 2" in message and repr(entry.strip()) in message
  with pytest.raises(DataError, match="IMG2.jpg|\\.\\."):
    now_lib.prediction_paths(str(tmp_path / "out"), entry)


def test_write_prediction_refuses_traversal(tmp_path):
  out = tmp_path / "a" / "b" / "pred"
  with pytest.raises(DataError, match=r"\.\./\.\./IMG2\.jpg"):
    now_lib.write_prediction(str(out), "../../IMG2.jpg", np.zeros((3, 3)),
                             np.array([[0, 1, 2]]), np.zeros((7, 3)))
  assert not glob.glob(str(tmp_path / "**" / "*.obj"), recursive=True)


def test_prediction_paths_refuse_a_symlink_out_of_the_folder(tmp_path):
  out, outside = tmp_path / "pred", tmp_path / "elsewhere"
  out.mkdir()
  outside.mkdir()
  os.symlink(outside, out / "S")
  with pytest.raises(DataError, match="S/selfie/IMG.jpg"):
    now_lib.prediction_paths(str(out), "S/selfie/IMG.jpg")
  assert now_lib.prediction_paths(str(out), "T/selfie/IMG.jpg")[0] == str(
      out / "T" / "selfie" / "IMG.obj")


def test_now_predict_writes_nothing_outside_out(tmp_path):
  from focus_jax import morphable  # pylint: disable=import-outside-toplevel
  from focus_jax.commands import now as now_cmd  # pylint: disable=import-outside-toplevel
  from focus_jax.data import landmarks as lm_lib  # pylint: disable=import-outside-toplevel
  from tests import face_scenes  # pylint: disable=import-outside-toplevel
  root = tmp_path / "d1" / "now"
  entry = "../../IMG2.jpg"            # iphone_pictures/../../IMG2.jpg = d1/IMG2.jpg
  s = face_scenes.face_photo(height=64, width=64, shape_seed=0, background_seed=0)
  (root / "iphone_pictures").mkdir(parents=True)
  iio.imwrite(tmp_path / "d1" / "IMG2.jpg", (s["image"] * 255 + 0.5).astype(np.uint8))
  (root / "imagepathsvalidation.txt").write_text(entry + "\n")
  model_file = tmp_path / "small.npz"
  morphable.save(face_scenes.small_model(), model_file)
  csv = tmp_path / "lm.csv"
  lm_lib.write_landmarks_csv(csv, ["IMG2.jpg"], s["landmarks"][None], decimals=3)
  out = tmp_path / "o1" / "o2" / "pred"
  with flagsaver.flagsaver(now_dir=str(root), out=str(out), model=str(model_file),
                           landmarks=str(csv), size=64, iterations=2, fit_batch=1):
    with pytest.raises(DataError, match=r"'\.\./\.\./IMG2\.jpg'"):
      now_cmd.main(["predict"])
  written = [p for p in glob.glob(str(tmp_path / "**" / "*"), recursive=True)
             if p.endswith((".obj", ".npy")) and not p.startswith(str(out))]
  assert not written, f"wrote outside --out: {written}"


# ----------------------------------------------------------------------------- .pth tensors


def _child_error(path):
  rc, out = hf.load_pth_in_child(path)
  assert rc == 0, f"the reader crashed (return code {rc}): {out}"
  result = json.loads(out.splitlines()[0])
  assert "error" in result, f"a hostile tensor was read: {result}"
  return result


HOSTILE_TENSORS = {
    # 4 stored values read as 4096: the rest came from neighbouring memory.
    "size_past_storage": dict(numel=4, size=(4096,), stride=(1,)),
    "offset_past_storage": dict(numel=4, offset=100, size=(4,), stride=(1,)),
    "negative_offset": dict(numel=4, offset=-2, size=(4,), stride=(1,)),
    "negative_stride": dict(numel=4, size=(4,), stride=(-100000,)),
    "huge_stride": dict(numel=4, size=(2, 2), stride=(1 << 40, 1)),
    "stride_past_storage": dict(numel=6, size=(2, 3), stride=(4, 1)),
    "negative_size": dict(numel=4, size=(-4,), stride=(1,)),
}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("case", sorted(HOSTILE_TENSORS))
def test_pth_tensor_outside_its_storage_is_refused(tmp_path, case, fmt):
  kwargs = dict(HOSTILE_TENSORS[case], name="layer1.0.conv1.weight")
  tensors, storages = hf.one_tensor(**kwargs)
  path = tmp_path / f"{case}.pth"
  if fmt == "zip":
    hf.write_pth_zip(path, tensors, storages)
  else:
    path.write_bytes(hf.legacy_bytes(tensors, storages))
  result = _child_error(path)
  assert result["error"] == "WeightsError", result
  assert str(path) in result["message"] and "layer1.0.conv1.weight" in result["message"]
  assert "\n" not in result["message"]


def test_pth_valid_views_still_read(tmp_path):
  # The positive control of the cases above: views inside the storage (transposed,
  # offset, a scalar, an empty tensor) read exactly as numpy's views of the data.
  data = np.arange(12, dtype=np.float32)
  views = [dict(name="t", offset=1, size=(3, 2), stride=(1, 3)),
           dict(name="s", offset=11, size=(), stride=()),
           dict(name="e", offset=12, size=(0, 5), stride=(5, 1)),
           dict(name="full", offset=0, size=(3, 4), stride=(4, 1))]
  tensors = [dict(v, key="0", numel=12) for v in views]
  path = hf.write_pth_zip(tmp_path / "ok.pth", tensors, {"0": data.tobytes()})
  sd = convert.load_torch_state_dict(path)
  np.testing.assert_array_equal(sd["t"], data[1:7].reshape(2, 3).T)
  assert sd["s"].shape == () and sd["s"] == 11
  assert sd["e"].shape == (0, 5)
  np.testing.assert_array_equal(sd["full"], data.reshape(3, 4))


def test_pth_declared_storage_larger_than_its_bytes_is_refused(tmp_path):
  tensors, storages = hf.one_tensor(numel=4096, size=(4096,), stride=(1,), name="fc.weight")
  storages["0"] = storages["0"][:16]
  path = hf.write_pth_zip(tmp_path / "short.pth", tensors, storages)
  with pytest.raises(WeightsError, match=r"short\.pth.*fc\.weight|short\.pth.*storage"):
    convert.load_torch_state_dict(path)
  legacy = tmp_path / "short_legacy.pth"
  legacy.write_bytes(hf.legacy_bytes(tensors, storages, counts={"0": -1}))
  with pytest.raises(WeightsError, match="short_legacy.pth"):
    convert.load_torch_state_dict(legacy)


def test_pth_tensor_without_a_storage_is_a_weights_error(tmp_path):
  # _rebuild_tensor_v2(5, ...): was AttributeError: 'int' object has no attribute 'array'.
  tensors = [dict(name="bn1.weight", storage=hf._int(5), offset=0, size=(4,), stride=(1,))]  # pylint: disable=protected-access
  path = hf.write_pth_zip(tmp_path / "nostorage.pth", tensors, {})
  with pytest.raises(WeightsError, match=r"nostorage\.pth.*bn1\.weight"):
    convert.load_torch_state_dict(path)


def test_pth_unknown_storage_dtype_is_a_weights_error(tmp_path):
  tensors, storages = hf.one_tensor()
  tensors[0]["storage_type"] = "ComplexFloatStorage"
  path = hf.write_pth_zip(tmp_path / "complex.pth", tensors, storages)
  with pytest.raises(WeightsError, match=r"complex\.pth.*ComplexFloatStorage"):
    convert.load_torch_state_dict(path)


def _resnet_like_state_dict():
  rng = np.random.default_rng(0)
  sd = {"conv1.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32)}
  for leaf in ("weight", "bias", "running_mean", "running_var"):
    sd[f"bn1.{leaf}"] = np.ones(8, np.float32)
  sd["fc.weight"], sd["fc.bias"] = np.ones((10, 8), np.float32), np.zeros(10, np.float32)
  return sd


def test_state_dict_of_another_network_is_a_weights_error():
  # A valid torchvision-style state dict given where an ArcFace iResNet is expected:
  # was KeyError: 'bn2.weight'.
  with pytest.raises(WeightsError, match="ArcFace iResNet.*bn2.weight"):
    convert.iresnet_variables_from_torch(_resnet_like_state_dict())
  odd = dict(_resnet_like_state_dict(), **{"layer1.0.downsample.2.weight": np.ones(3, np.float32),
                                           "scale": np.ones(3, np.float32)})
  with pytest.raises(WeightsError) as info:
    convert.resnet_variables_from_torch(odd)
  assert "\n" not in str(info.value)
