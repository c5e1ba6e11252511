"""The `rlft` command: `rlft <command> [flags]`, a command per job, the configs of `python jobs/<job>.py`.

    rlft d3po | draft | ddpo          sample, score and train (Ray, or --no-ray)
    rlft sample-groups | label        a labelling round: sample groups, serve the labelling page
    rlft train-labels                 D3PO on a labelled batch
    rlft pretrain-tiny                pretrain the tiny model into a new folder
    rlft recipes                      the recipes shipped for real models (`--config NAME`)

`rlft <command> --help` lists every flag. The job files in jobs/ call the same functions, for
`ray job submit -- python jobs/d3po.py`.
"""

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

D3PO = """D3PO: fine-tune a diffusion model from preferences between samples that share their initial noise.
Groups sharing x_T are ranked by a reward and trained with the per-step DPO loss against the adapter-off
reference. With no flags: the pretrained tiny model (shipped in the package) on JPEG compressibility, on a
local Ray, judged on a fixed evaluation set, ending with a before/after grid. The same --run-name resumes."""
DRAFT = """DRaFT: backpropagate a differentiable reward through the last denoising steps (DRaFT-K, DRaFT-LV,
full DRaFT; ReFL- and AlignProp-style variants). With no flags: DRaFT-1 on the tiny model, smoothness."""
DDPO = """DDPO: policy gradients with PPO's clip on every denoising step, the baseline. With no flags: the
tiny model on JPEG compressibility."""
TRAIN_LABELS = """D3PO on a batch people labelled (sampled by `rlft sample-groups`, labelled with `rlft
label`): no reward model, the labels are the preferences."""
SAMPLE_GROUPS = """Sample a batch for people to label: k images per prompt sharing their initial noise, saved
to a folder with every latent (training recomputes their log-probs); `rlft label <folder>` serves it."""
LABEL = """Serve the labelling page for a batch folder: people pick each group's best and worst image (keys
1-8 choose an image, b/w best/worst, d/u flags, Enter submit). Labels are committed as they are submitted."""
PRETRAIN = """Pretrain the tiny model on captioned shapes (VAE, then UNet with its text encoder) and write it
to a new folder, which `--model <folder>` loads. The shipped weights are never overwritten."""


def d3po(args: Sequence[str], prog: str = "rlft d3po") -> None:
    from rlft.configs import D3POConfig
    from rlft.job import run_job

    run_job(D3POConfig, "d3po", D3PO, args, prog)


def draft(args: Sequence[str], prog: str = "rlft draft") -> None:
    from rlft.configs import DRaFTConfig
    from rlft.job import run_job

    run_job(DRaFTConfig, "draft", DRAFT, args, prog)


def ddpo(args: Sequence[str], prog: str = "rlft ddpo") -> None:
    from rlft.configs import DDPOConfig
    from rlft.job import run_job

    run_job(DDPOConfig, "ddpo", DDPO, args, prog)


def train_labels(args: Sequence[str], prog: str = "rlft train-labels") -> None:
    from rlft.job import run_labels_job

    run_labels_job(TRAIN_LABELS, args, prog)


def sample_groups(args: Sequence[str], prog: str = "rlft sample-groups") -> None:
    from rlft.configs.flags import parse_config
    from rlft.configs.hub import check_hub_model
    from rlft.feedback.sample_groups import SampleGroupsConfig
    from rlft.feedback.sample_groups import sample_groups as sample

    try:
        cfg = parse_config(SampleGroupsConfig, "sample-groups", args, SAMPLE_GROUPS, prog)
        check_hub_model(cfg.model)
        folder = sample(cfg)
    except ValueError as error:
        sys.exit(f"error: {error}")
    labeller = "python jobs/label.py" if prog.startswith("jobs/") else "rlft label"  # as it was started
    print(f"label it: {labeller} {folder}")


def label(args: Sequence[str], prog: str = "rlft label") -> None:
    from rlft.configs.flags import parse_config
    from rlft.feedback.label_server import LabelConfig, serve

    try:
        serve(parse_config(LabelConfig, "label", args, LABEL, prog))
    except ValueError as error:  # a bad flag, a folder with no batch, a port in use
        sys.exit(f"error: {error}")


def pretrain_tiny(args: Sequence[str], prog: str = "rlft pretrain-tiny") -> None:
    from rlft.configs.flags import parse_config
    from rlft.world.pretrain import PretrainArgs, pretrain

    try:
        cfg = parse_config(PretrainArgs, "pretrain-tiny", args, PRETRAIN, prog)
        out = cfg.out or f"tiny-model-{time.strftime('%Y%m%d-%H%M%S')}"
        PretrainArgs.check_out(out)
    except ValueError as error:
        sys.exit(f"error: {error}")
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pretrain(cfg.settings, out, cfg.device, log=lambda line: print(line, flush=True))
    print(f"the tiny model is in {Path(out).resolve()}; train on it with --model {out}")


def recipes(args: Sequence[str], prog: str = "rlft recipes") -> None:
    from importlib import resources

    from rlft.configs.recipes import SHIPPED, shipped_recipes

    for name, header in shipped_recipes().items():
        print(f"{name:32s} {header}")
    print(f"(files in {resources.files(SHIPPED)}; copy one and pass --config FILE)")


COMMANDS: dict[str, Callable[[Sequence[str], str], None]] = {
    "d3po": d3po,
    "draft": draft,
    "ddpo": ddpo,
    "sample-groups": sample_groups,
    "label": label,
    "train-labels": train_labels,
    "pretrain-tiny": pretrain_tiny,
    "recipes": recipes,
}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.exit(f"error: unknown command {name!r}: one of {', '.join(COMMANDS)} (rlft --help)")
    COMMANDS[name](rest, f"rlft {name}")


if __name__ == "__main__":
    main()
