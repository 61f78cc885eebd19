"""Layers shared by every model family (never import models, data or train)."""
