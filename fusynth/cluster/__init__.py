"""Clustering fetal views from image embeddings: algorithms, metrics, evaluation."""
