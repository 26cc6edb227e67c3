"""The CDK stacks of the Custos control plane; ``app.py`` wires them via ``app_builder``."""
