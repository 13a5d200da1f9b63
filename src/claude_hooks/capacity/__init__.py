"""Capacity planning: replay a workload against pools of chosen sizes and policies, offline."""
