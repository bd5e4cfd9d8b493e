"""Command-line tools: ``python -m jdnet_plugin.train`` and friends."""
