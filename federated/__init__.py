"""Federated studies on harmonized OMOP data: study specs, site features, Flower apps, models, governance."""
