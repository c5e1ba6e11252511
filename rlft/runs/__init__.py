"""What a run is and keeps: its config (every field checked on construction), checkpoints, storage on S3 or
any pyarrow filesystem, and MLflow tracking. Imports rlft.diffusion, rlft.rewards and rlft.prompts."""
