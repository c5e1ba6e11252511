"""The algorithms: pure losses with hand-worked tests (`losses`), rewards to advantages (`advantages`), D3PO,
DRaFT and DDPO (each a learner that runs where the weights live, and an epoch written once), the `Backend`
interface their epochs use (`backend`), and the registry a config's `algorithm` picks from (`registry`). No
Ray, MLflow or files here.
Imports from rlft: configs, diffusion, epoch, families and rewards."""
