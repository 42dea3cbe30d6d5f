"""Model Gallery serving: the Open Inference Protocol model server and the gateway."""
