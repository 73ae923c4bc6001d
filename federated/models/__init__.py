"""Federated models, one per file. Names as the CLI and the run config spell them."""

MODEL_NAMES = ("xgboost-hist", "xgboost-bagging", "xgboost-cyclic", "mlp")
