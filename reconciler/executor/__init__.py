"""The executor: turns a plan into Serve configuration changes and carries them out through the adapter."""
