"""Serving: TrainingService, its jobs and their progress broadcasts."""
