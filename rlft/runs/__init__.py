"""What a run keeps: checkpoints, storage on S3 or any pyarrow filesystem, and MLflow tracking.
Imports from rlft: nothing."""
