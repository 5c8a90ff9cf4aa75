"""The study wing: everything that compares finished runs - the `compare` and `rounds` commands,
the runs read back from MLflow (`runs`), the verdicts and their statistics (`verdicts`,
`seed_statistics`, `sequential`), affinity, the report and its figures, the registry's champion.

No stage of dvc.yaml imports it (tests/test_dvc_yaml.py checks), so rewording a verdict never
makes `dvc repro` retrain; a sweep of `pipeline.train` reaches it only through the Hydra callback
that compares the sweep's runs when it ends (conf/config.yaml).
"""
