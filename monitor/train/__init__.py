"""Training and fine-tuning (``monitor train``).

``table`` (the labelled-segment table: targets, windows, groups), data sources ``sources`` (folders,
manifest, dispatch), ``annotations`` (Raven / Audacity / CSV) and ``reviews`` (reviewer verdicts);
``splits``; ``dataset`` (features through the shared front end, the loader, normalisation stats);
``augment``, ``sampling``, ``losses``; ``model_init`` (the starting model, freezing), ``optim``
(optimiser, LR schedule, precision, step losses), ``fit`` (the loop), ``checkpoints`` (exact resume),
``evaluate`` (scoring by ``monitor.infer.Scorer``), ``metrics``; ``calibrate``, ``export``;
``recipes`` (packaged recipes by name); ``single`` (one run: fit, calibrate, test, export), ``crossval``
(K folds and their ensemble bundle), ``cli`` (``monitor train``, ``--plan``).

Entry points: ``monitor.train.cli.train(cfg, out_dir, name=...)`` and
``monitor.train.config.load_config(path, overrides)``. Nothing heavy is imported here.
"""
