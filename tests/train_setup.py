"""Set-up shared by the training-step tests that run in subprocesses
(tests/test_train_bfloat16.py, tests/test_train_parallel.py): a fresh tiny
TrainState whose encoder head is non-zero, and a batch of synthetic faces.

Imported inside the subprocesses (``PYTHONPATH`` = the repository), so it imports
nothing from pytest.
"""

import numpy as np

from focus_jax.data import synthetic
from focus_jax.train import state as state_lib


def tiny_state_and_batch(config, num: int, seed: int = 3, pseudo: bool = False):
  """(networks, host TrainState, batch) for ``config`` (a tiny TrainConfig).

  The encoder head is set to small non-zero values (a zero head predicts the mean
  face whatever the image, so no gradient would reach the trunk). The batch holds
  ``num`` synthetic faces of ``config.image_size``: ``image`` [num, S, S, 3],
  ``landmarks`` [num, 68, 2] px and, with ``pseudo``, ``pseudo`` [num, S, S] (the
  true visible-skin masks standing in for pseudo masks).
  """
  nets = state_lib.make_networks(config)
  st = state_lib.to_host(state_lib.init_state(config, nets))
  head = st.encoder["params"]["resnet"]["fc"]
  head["kernel"] = np.asarray(0.01 * np.sin(np.arange(head["kernel"].size)).reshape(
      head["kernel"].shape), np.float32)
  gen = synthetic.SyntheticFaces(nets.model, synthetic.SyntheticConfig(size=config.image_size),
                                 seed=seed, batch_size=num)
  samples = gen.generate(range(num))
  batch = dict(image=np.stack([s.image for s in samples]).astype(np.float32),
               landmarks=np.stack([s.landmarks for s in samples]).astype(np.float32))
  if pseudo:
    batch["pseudo"] = np.stack([s.visible_mask for s in samples]).astype(np.float32)
  return nets, st, batch
