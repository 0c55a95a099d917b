"""Training pipeline: dataset snapshots, continual pretraining, SFT data and SFT, export (issues 4 and 6)."""
