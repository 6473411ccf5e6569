"""Box 4: training datasets, experiment tracking, trainers and evaluation."""
