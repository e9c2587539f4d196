"""Data: datasets in the FOCUS reference layout, alignment, automatic landmarks,
synthetic occluded faces, and the resumable input pipeline.

Submodules (import what you need; :mod:`synthetic` pulls in JAX and the renderer,
:mod:`detect` needs the optional dlib extra at call time):

* :mod:`~focus_jax.data.landmarks`: ``<split>_landmarks.csv`` reading/writing.
* :mod:`~focus_jax.data.dataset`: :class:`FaceDataset`, ``read_reference``,
  ``read_folder``, ``open_dataset`` (image files: :mod:`focus_jax.images`).
* :mod:`~focus_jax.data.align`: five-point similarity alignment to the canonical
  crop and back.
* :mod:`~focus_jax.data.detect`: dlib landmarks with the aligned-crop fallback and
  the CSV cache.
* :mod:`~focus_jax.data.synthetic`: :class:`SyntheticFaces`, ``write_dataset``.
* :mod:`~focus_jax.data.pipeline`: :class:`Pipeline`.
"""

from focus_jax.data.align import Alignment, align_example, estimate as estimate_alignment
from focus_jax.data.dataset import FaceDataset, Record, open_dataset, read_folder, read_reference
from focus_jax.data.landmarks import LandmarkTable, read_landmarks_csv, write_landmarks_csv
from focus_jax.data.pipeline import Pipeline
