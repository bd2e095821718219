"""Stage 1, the recipe: its models (recipe.model) and its reading from YAML with positions (recipe.loader)."""
