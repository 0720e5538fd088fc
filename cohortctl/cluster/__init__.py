"""Clustering: feature integration, methods, stability and the run writer."""
