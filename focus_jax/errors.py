"""Exceptions raised at the edges (files, flags, user input).

Every error names the culprit (file, flag or argument) and says what to do, so a
researcher can fix the problem from the message alone.
"""


class FocusError(Exception):
  """Base class of all focus-jax errors."""


class ModelFileError(FocusError, ValueError):
  """A morphable-model file is missing, truncated, corrupt or in an unknown layout."""


class CoefficientError(FocusError, ValueError):
  """A coefficient vector does not match the model it is used with."""


class DataError(FocusError, ValueError):
  """A dataset file (image, landmark CSV, mask, cache) is missing, malformed or unusable."""


class ImageReadError(DataError):
  """An image file cannot be read or decoded (corrupt, truncated, not an image).

  Input pipelines catch this one, skip the image with a warning and count it.
  """


class CheckpointError(FocusError, RuntimeError):
  """No readable checkpoint where one is required."""
