"""Audits of synthetic data: pair consistency, FID/KID, memorization."""
