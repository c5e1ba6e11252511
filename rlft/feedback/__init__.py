"""D3PO from people's choices: batches of groups to label (`sample_groups`, `batch_folder`), the labelling
page and its server (`label_server`, `label_page/`), the labels and their pairs (`labels`, `label_pairs`),
and training on them (`labels_config`, the labels job's config; `human`). The top layer below rlft.job."""
