"""The laptop lab: `get_config(arg)` files (see README, "Laptop lab")."""
