"""A trained FOCUS: the encoder and UNet rebuilt from a run's config, their forward
pass, and their weights read from a training run's folder.

* :mod:`~focus_jax.autoencoder.networks` — :func:`load_model`, :func:`make_modules`,
  the forward pieces (:func:`encode`, :func:`segment`, :func:`render_faces`,
  :func:`prior_sigma_map`) and :func:`make_predict` (eval mode, photo crops -> fit);
* :mod:`~focus_jax.autoencoder.checkpoints` — :func:`load_networks` (the newest
  readable checkpoint's network variables and config).

Training (:mod:`focus_jax.train`) builds its steps from the same pieces; inference
(:mod:`focus_jax.app.inference`) uses them without importing any training code.
"""
