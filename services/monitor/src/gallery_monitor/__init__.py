"""Model Gallery monitor: watches the lifecycle, serving figures and drift, and publishes `model.degraded`."""
