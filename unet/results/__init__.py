"""Tools that work on finished masks: scores against ground truth, GIS exports, previews."""
