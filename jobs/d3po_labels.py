"""D3PO on people's labels: train on the pairs labelled in a batch folder, with no reward model.

The batch comes from `jobs/sample_groups.py` and is labelled on `jobs/label.py`'s page. Its model, steps,
guidance and eta are the batch's (training recomputes the sampler's log-probabilities); a batch sampled from
an adapter continues that adapter. Each pass over the majority pairs is an epoch on Ray Train workers (no
sampler or scorer starts; --no-ray trains in this process), checkpointed under runs/<run-name> and logged to
MLflow; the same --run-name again resumes it. The adapter ends in runs/<run-name>/adapter, which
`jobs/sample_groups.py --adapter` samples the next round from.
"""

from rlft.job import run_labels_job

if __name__ == "__main__":
    run_labels_job(__doc__)
