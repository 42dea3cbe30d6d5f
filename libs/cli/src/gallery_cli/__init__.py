"""The `gallery` command: starts the local stack and talks to the services and the event bus."""
