"""Restore: match disks, plan (pure data), execute (one guard), the flow the agent runs."""
