"""DPO: preference optimisation straight from comparison pairs (TRL DPOTrainer)."""
