"""Property-based fuzzing of the readers of untrusted files (issue 17).

Property: any input gives a result or the module's own error (DataError for
landmark CSVs and NoW files, WeightsError for .pth), never another exception, a
crash or a hang. Budgets are small and derandomized (the same examples every run), so
the default run takes seconds and CI cannot flake; raise ``FUZZ_EXAMPLES`` for a long
local campaign.
"""

import io
import os
import zipfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # pylint: disable=wrong-import-position

from focus_jax.app import now as now_lib  # pylint: disable=wrong-import-position
from focus_jax.app import now_box  # pylint: disable=wrong-import-position
from focus_jax.data import landmarks as lm_lib  # pylint: disable=wrong-import-position
from focus_jax.errors import DataError  # pylint: disable=wrong-import-position
from focus_jax.nets import convert  # pylint: disable=wrong-import-position
from focus_jax.nets.weights import WeightsError  # pylint: disable=wrong-import-position
from tests import hostile_files as hf  # pylint: disable=wrong-import-position

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "80"))


def fuzz(examples=EXAMPLES):
  return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])


def _mutated(data: st.DataObject, blob: bytes) -> bytes:
  """``blob`` with a few random byte flips, a cut, an insertion or a duplication."""
  out = bytearray(blob)
  for _ in range(data.draw(st.integers(1, 4))):
    kind = data.draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
    pos = data.draw(st.integers(0, max(len(out) - 1, 0)))
    if kind == "flip" and out:
      out[pos] = data.draw(st.integers(0, 255))
    elif kind == "cut":
      del out[pos:pos + data.draw(st.integers(1, 64))]
    elif kind == "insert":
      out[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    else:
      out[pos:pos] = out[pos:pos + data.draw(st.integers(1, 32))]
  return bytes(out)


# ----------------------------------------------------------------------------- landmark CSVs

CELLS = st.one_of(st.sampled_from(["0", "12.5", "-3", "nan", "NaN", "inf", "-inf", "1e400",
                                   "1e39", "", " ", "x", "1_0", "\u0663", "0x10", "\x00",
                                   '"', '"a,b"', "1e-400", "+4"]),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.text(max_size=6))


@st.composite
def csv_text(draw):
  rows = []
  for _ in range(draw(st.integers(0, 4))):
    n = draw(st.sampled_from([lm_lib.NUM_VALUES, lm_lib.NUM_VALUES + 1, 0, 3,
                              lm_lib.NUM_VALUES - 1]))
    if n == lm_lib.NUM_VALUES:
      values = [str(v) for v in np.arange(n)]
      for _ in range(draw(st.integers(0, 3))):
        values[draw(st.integers(0, n - 1))] = draw(CELLS)
    else:
      values = [draw(CELLS) for _ in range(n)]
    name = draw(st.sampled_from(["a.jpg", "", " ", '"q,uoted".jpg', "d/e.png"]) | st.text(max_size=8))
    rows.append(",".join([name] + values))
  sep = draw(st.sampled_from(["\n", "\r\n", "\r", "\n\n"]))
  return sep.join(rows) + draw(st.sampled_from(["", "\n", ",", '"', "\x00"]))


def _check_table(table):
  assert isinstance(table, lm_lib.LandmarkTable)
  assert table.landmarks.shape == (len(table.names), lm_lib.NUM_LANDMARKS, 2)
  assert table.landmarks.dtype == np.float32
  lm = table.landmarks
  assert np.all(np.isfinite(lm) | np.isnan(lm)), "an infinite landmark was accepted"
  assert all(isinstance(n, str) and n for n in table.names)


@fuzz()
@given(csv_text())
def test_fuzz_landmark_csv_text(text):
  try:
    table = lm_lib.parse_landmarks_csv(text, "fuzz.csv")
  except DataError as e:
    assert "fuzz.csv" in str(e)
    return
  _check_table(table)


@fuzz()
@given(st.binary(max_size=600) | st.text(max_size=300).map(lambda t: t.encode("utf-8")))
def test_fuzz_landmark_csv_bytes(tmp_path_factory, raw):
  path = tmp_path_factory.mktemp("csv") / "lm.csv"
  path.write_bytes(raw)
  try:
    _check_table(lm_lib.read_landmarks_csv(path))
  except DataError as e:
    assert str(path) in str(e)


@fuzz()
@given(st.data())
def test_fuzz_landmark_csv_mutations(tmp_path_factory, data):
  buf = io.StringIO()
  names = ["a.jpg", "b/c.jpg"]
  lm = np.random.default_rng(0).uniform(0, 64, size=(2, 68, 2))
  text = "\n".join(lm_lib.format_row(n, l, decimals=2) for n, l in zip(names, lm)) + "\n"
  buf.write(text)
  path = tmp_path_factory.mktemp("csv") / "lm.csv"
  path.write_bytes(_mutated(data, text.encode()))
  try:
    _check_table(lm_lib.read_landmarks_csv(path))
  except DataError as e:
    assert str(path) in str(e)


# ----------------------------------------------------------------------------- .pth


def _expected_view(storage, offset, size, stride):
  """The tensor by index arithmetic in Python ints (no strided memory tricks)."""
  import itertools  # pylint: disable=import-outside-toplevel
  if 0 in size:   # (product() would first expand the other ranges)
    return np.zeros(size, storage.dtype)
  values = [storage[offset + sum(i * s for i, s in zip(index, stride))]
            for index in itertools.product(*(range(n) for n in size))]
  return np.asarray(values, storage.dtype).reshape(size)


DIMS = st.one_of(st.integers(-3, 7), st.sampled_from([1 << 31, 1 << 62, -(1 << 63), 1 << 70]))


@fuzz(120)
@given(numel=st.integers(0, 24), nbytes_delta=st.sampled_from([0, 0, 0, -4, 4, -1]),
       offset=DIMS, size=st.lists(DIMS, max_size=3), stride_pick=st.data(),
       legacy=st.booleans())
def test_fuzz_pth_tensor_headers(tmp_path_factory, numel, nbytes_delta, offset, size,
                                 stride_pick, legacy):
  stride = stride_pick.draw(st.lists(DIMS, min_size=len(size), max_size=len(size))
                            | st.lists(DIMS, max_size=3))
  data = np.arange(numel, dtype="<f4")
  raw = data.tobytes()
  raw = raw[:len(raw) + nbytes_delta] if nbytes_delta < 0 else raw + b"\x00" * nbytes_delta
  tensors = [dict(name="net.w", key="0", numel=numel, offset=offset, size=tuple(size),
                  stride=tuple(stride))]
  path = tmp_path_factory.mktemp("pth") / "f.pth"
  if legacy:
    path.write_bytes(hf.legacy_bytes(tensors, {"0": raw}, counts={"0": numel}))
  else:
    hf.write_pth_zip(path, tensors, {"0": raw})
  try:
    sd = convert.load_torch_state_dict(path)
  except WeightsError as e:
    assert str(path) in str(e) and "\n" not in str(e)
    return
  # Accepted: then it is exactly the in-bounds view numpy's indexing gives.
  # (bytes after a legacy file's last storage are ignored, as torch does)
  assert len(raw) == 4 * numel or (legacy and len(raw) > 4 * numel)
  assert len(size) == len(stride)
  np.testing.assert_array_equal(sd["net.w"], _expected_view(data, offset, tuple(size),
                                                            tuple(stride)))


def _valid_pth(legacy: bool) -> bytes:
  data = np.arange(10, dtype="<f4")
  tensors = [dict(name="conv1.weight", key="0", numel=10, offset=0, size=(2, 5), stride=(5, 1)),
             dict(name="bn1.bias", key="1", numel=3, offset=1, size=(2,), stride=(1,))]
  storages = {"0": data.tobytes(), "1": data[:3].tobytes()}
  if legacy:
    return hf.legacy_bytes(tensors, storages)
  buf = io.BytesIO()
  hf.write_pth_zip(buf, tensors, storages)
  return buf.getvalue()


@fuzz()
@given(st.data(), st.sampled_from(["legacy", "zip", "zip_pickle"]))
def test_fuzz_pth_mutations(tmp_path_factory, data, fmt):
  path = tmp_path_factory.mktemp("pth") / "m.pth"
  if fmt == "zip_pickle":   # a mutated data.pkl in an intact zip (the CRC still matches)
    data_pkl = _mutated(data, hf.tensor_pickle(
        [dict(name="conv1.weight", key="0", numel=10, offset=0, size=(2, 5), stride=(5, 1))]))
    hf.write_pth_zip(path, [], {"0": np.arange(10, dtype="<f4").tobytes()}, pickle_bytes=data_pkl)
  else:
    path.write_bytes(_mutated(data, _valid_pth(fmt == "legacy")))
  try:
    sd = convert.load_torch_state_dict(path)
  except WeightsError as e:
    assert str(path) in str(e) and "\n" not in str(e)
    return
  assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in sd.items())


@fuzz(40)
@given(st.binary(max_size=400))
def test_fuzz_pth_random_bytes(tmp_path_factory, raw):
  path = tmp_path_factory.mktemp("pth") / "r.pth"
  path.write_bytes(raw)
  with pytest.raises(WeightsError):
    convert.load_torch_state_dict(path)


def test_fuzz_pth_valid_files_read():
  """The seeds of the mutation fuzz are valid (else it would only test refusals)."""
  import tempfile  # pylint: disable=import-outside-toplevel
  for legacy in (False, True):
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "v.pth")
      with open(path, "wb") as f:
        f.write(_valid_pth(legacy))
      sd = convert.load_torch_state_dict(path)
      np.testing.assert_array_equal(sd["bn1.bias"], [1, 2])
      assert sd["conv1.weight"].shape == (2, 5)


# ----------------------------------------------------------------------------- NoW files


@fuzz()
@given(st.binary(max_size=300) | st.lists(
    st.sampled_from(["S/selfie/I.jpg", "..", ".", "/", "a/b", "x\\y\\z.jpg", "a/b/c/d.jpg",
                     "\x00", " ", "S/multiview_neutral/IMG_1.jpg", "\u2028", "~", "C:"]),
    max_size=6).map(lambda parts: "\n".join(["/".join(parts[i:i + 3]) for i in range(0, 6, 3)])
                    .encode("utf-8")))
def test_fuzz_now_image_list(tmp_path_factory, raw):
  folder = tmp_path_factory.mktemp("now")
  path = folder / "list.txt"
  path.write_bytes(raw)
  try:
    entries = now_lib.read_image_list(str(path))
  except DataError as e:
    assert str(path) in str(e)
    return
  out = folder / "out"
  for entry in entries:
    obj, npy = now_lib.prediction_paths(str(out), entry)
    for p in (obj, npy):
      assert os.path.commonpath([str(out), os.path.realpath(p)]) == str(out)


def _valid_boxes():
  plain = hf.npy_bytes(np.array([10.0, 20.0, 110.0, 140.0]), allow_pickle=False)
  pickled = hf.npy_bytes(np.array(dict(left=np.int64(10), top=20.5, right=np.float32(110),
                                       bottom=140), dtype=object))
  return [plain, pickled]


@fuzz(120)
@given(st.data(), st.sampled_from([0, 1]))
def test_fuzz_now_box_mutations(tmp_path_factory, data, which):
  path = tmp_path_factory.mktemp("box") / "b.npy"
  path.write_bytes(_mutated(data, _valid_boxes()[which]))
  try:
    box = now_box.read_box(str(path))
  except DataError as e:
    assert str(path) in str(e) and "\n" not in str(e)
    return
  assert len(box) == 4 and all(np.isfinite(box)) and box[0] < box[2] and box[1] < box[3]


@fuzz(40)
@given(st.binary(max_size=300))
def test_fuzz_now_box_random_bytes(tmp_path_factory, raw):
  path = tmp_path_factory.mktemp("box") / "r.npy"
  path.write_bytes(b"\x93NUMPY" + raw)
  try:
    now_box.read_box(str(path))
  except DataError as e:
    assert str(path) in str(e)


@fuzz(60)
@given(st.data())
def test_fuzz_now_pp_mutations(tmp_path_factory, data):
  path = tmp_path_factory.mktemp("pp") / "s.pp"
  path.write_bytes(_mutated(data, now_lib.format_pp(np.arange(21.0).reshape(7, 3)).encode()))
  try:
    pts = now_lib.read_pp(str(path))
  except DataError as e:
    assert str(path) in str(e)
    return
  assert pts.ndim == 2 and pts.shape[1] == 3 and pts.dtype == np.float64


# ----------------------------------------------------------------------------- dlib .dat


@pytest.fixture(scope="module")
def dlib_bytes():
  from focus_jax.nets import weights  # pylint: disable=import-outside-toplevel
  try:
    path = weights.resolve_dlib_weights()
  except WeightsError:
    pytest.skip("dlib face-recognition weights not installed (pip install "
                "face-recognition-models)")
  with open(path, "rb") as f:
    return f.read()


@fuzz(20)
@given(data=st.data())
def test_fuzz_dlib_mutations(dlib_bytes, data):  # pylint: disable=redefined-outer-name
  from focus_jax.nets import dlib_reader  # pylint: disable=import-outside-toplevel
  # Mutations near the start hit the headers; elsewhere a layer's header or its floats.
  head = data.draw(st.sampled_from([4096, len(dlib_bytes)]))
  raw = _mutated(data, dlib_bytes[:head]) + dlib_bytes[head:]
  if data.draw(st.booleans()):
    raw = raw[:data.draw(st.integers(0, len(raw)))]
  try:
    net = dlib_reader.parse_dlib_net(raw, "fuzz.dat")
  except WeightsError as e:
    assert "fuzz.dat" in str(e) and "\n" not in str(e)
    return
  assert all(isinstance(layer, dict) and "type" in layer for layer in net["layers"])
