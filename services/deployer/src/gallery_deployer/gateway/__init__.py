"""The inference gateway: one OIP v2 REST API in front of every deployed model's backends."""
