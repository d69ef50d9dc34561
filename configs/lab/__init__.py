"""The laptop lab: `get_config(arg)` files (see docs/lab.md)."""
