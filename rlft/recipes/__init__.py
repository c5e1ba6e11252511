"""Recipes for real models: TOML files a user copies and edits, loaded with `--config <name-or-path>`
(rlft/configs/recipes.py). Each file's keys are its job's config fields plus `job`; its comments give the
source of every number."""
