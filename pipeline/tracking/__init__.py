"""MLflow: the store (`store`), a run's life (`runs`: connecting, ending in a final state, the runs
others left open; `outages`: a server that goes away mid-training), which runs are the same
configuration (`identity`), what a run records (`record`, `logged_model`) and Optuna's study storage
(`optuna_storage`)."""
