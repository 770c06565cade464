"""The bottom of framepipe's import graph: errors a user reads, and the rules for every
file a run writes. Imports nothing from `pipeline/`, `hw/` or `models/`."""
