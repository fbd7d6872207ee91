"""Training and fine-tuning (``monitor train``): data sources, grouped splits, the shared front end,
augmentation, the fit/evaluate/resume engine, metrics, threshold calibration and bundle export.

Entry points: ``monitor.train.cli.train(cfg, out_dir, name=...)`` and
``monitor.train.config.load_config(path, overrides)``. Nothing heavy is imported here.
"""
