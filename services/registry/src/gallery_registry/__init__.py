"""Model Gallery registry: the system of record for models, versions, artifacts and aliases."""
