"""TCOD: temporal-curriculum on-policy distillation for multi-turn LLM agents."""
