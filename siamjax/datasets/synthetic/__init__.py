"""The embedded procedural signature dataset."""
