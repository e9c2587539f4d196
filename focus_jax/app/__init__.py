"""The application: the workflows behind the ``focus-jax`` commands.

* :mod:`~focus_jax.app.inference` — one photo -> detection, alignment, fit (or a
  training run's networks), outputs in photo pixels (``focus-jax fit``);
* :mod:`~focus_jax.app.demo` — the synthetic occluded-face demo (``focus-jax demo``);
* :mod:`~focus_jax.app.now` — the NoW challenge: layout, submission files, scans, the
  metric and its report (``focus-jax now``); :mod:`~focus_jax.app.now_box` — its
  face-box files, read without unpickling;
* :mod:`~focus_jax.app.evaluate` — prediction folders scored against a dataset's ground
  truth (``focus-jax eval``).

Nothing here is imported by the rooms below (see docs/ARCHITECTURE.md), and nothing
here imports training code.
"""
