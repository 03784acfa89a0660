"""Classic tabular models: training, registry, batch prediction (see classic_ml.train)."""
