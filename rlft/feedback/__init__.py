"""D3PO from people's choices: batches of groups to label (`sample_groups`, `batch_folder`), the labelling
page and its server (`label_server`, `label_page/`), the labels and their pairs (`labels`, `label_pairs`),
and training on them (`labels_config`, the labels job's config; `human`, the epoch over the labelled pairs,
which rlft/training.py runs in one process or on Ray). Nothing here knows of Ray.
Imports from rlft: algorithms, configs, diffusion, epoch, runs and zoo."""
