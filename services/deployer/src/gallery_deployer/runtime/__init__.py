"""Where model servers run: one interface (`base.Runtime`), a local and a Kubernetes implementation."""
