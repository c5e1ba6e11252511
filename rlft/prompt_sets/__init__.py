"""Prompt sets shipped as text files (package data): one prompt per line, '#' lines say what the set is and
where it comes from. rlft/prompts.py registers each file under its name without the `.txt`."""
