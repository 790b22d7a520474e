"""Synthetic cohorts: sharded, seeded, resumable generation into the sample schema."""
