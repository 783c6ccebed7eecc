"""Typed recipes: schema, YAML loading and overrides."""

from vitkit.config.loader import load_recipe, recipe_to_yaml, shipped_recipes
from vitkit.config.schema import Recipe

__all__ = ["Recipe", "load_recipe", "recipe_to_yaml", "shipped_recipes"]
