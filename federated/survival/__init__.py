"""Survival analysis for federated studies: the site-stratified Cox model's per-site sums, survival metrics and
Kaplan-Meier curves from per-site counts. Pure numpy: the Flower and XGBoost wiring lives in ``models/``."""
