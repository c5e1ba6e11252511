"""Write reward folders with random weights, to run the jobs on model-based rewards offline.

    python benchmarks/tools/random_reward_folders.py OUT [--small]
    python jobs/draft.py --reward aesthetic:OUT/aesthetic --no-ray --no-track --epochs 1
    python jobs/draft.py --reward imagereward:OUT/imagereward ...
    python jobs/draft.py --reward pickscore:OUT/pickscore ...

OUT/aesthetic holds a CLIP ViT-L/14-shaped vision model (`--small`: a 2-layer, 32-wide one, seconds instead
of a minute) and a random aesthetic head; OUT/pickscore a CLIP-H-shaped CLIPModel (PickScore's shape, 986 M
parameters; `--small`: 2 layers, 32 wide) with a CLIP tokenizer built offline for the prompt sets' words;
OUT/imagereward holds the image-reward package's ImageReward class
(BLIP ViT-L and BERT-base, 447 M parameters, 1.8 GB) with random weights (a wider random head than
the package's, so that scores differ between images), its med_config.json and a small BERT vocabulary in
tokenizer/. The scores mean nothing; the shapes, loading and gradients are the real ones.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from rlft.prompts import PROMPT_SETS
from rlft.rewards import aesthetic, imagereward, pickscore

VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
SMALL = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)


def random_aesthetic(small: bool = True, seed: int = 0) -> aesthetic.AestheticPredictor:
    """A random-weight predictor: CLIP vision (224 px, patch 14, 768-wide projection) and the MLP head."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        **(SMALL if small else VIT_L14), image_size=224, patch_size=14, projection_dim=768
    )
    head = aesthetic.AestheticHead()
    return aesthetic.AestheticPredictor(CLIPVisionModelWithProjection(config), head).eval()


def write_vocab(folder: Path, prompts: tuple[str, ...]) -> Path:
    """A BERT vocab.txt with the special tokens and every word of `prompts` (lower case, as BERT-uncased)."""
    words = sorted({w for p in prompts for w in p.lower().replace(",", " ").split()})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    return folder


def random_imagereward(vocab: Path, seed: int = 0):
    """The package's ImageReward with random weights and a BERT vocabulary read from `vocab`."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        med_config = Path(tmp) / "med_config.json"
        med_config.write_text(json.dumps(imagereward.MED_CONFIG))
        model = imagereward.build_model(med_config, vocab)
    # The package's head starts at std 1/769, which makes every image score the same; a wider random head
    # gives scores that differ between images, so preferences and gradients are not all ties and zeros.
    for layer in model.mlp.layers:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=0.05)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--small", action="store_true", help="small CLIPs for aesthetic and pickscore")
    parser.add_argument("--only", choices=["aesthetic", "pickscore", "imagereward"], help="one folder only")
    args = parser.parse_args()
    if args.only in (None, "aesthetic"):
        aesthetic.save_folder(args.out / "aesthetic", random_aesthetic(args.small))
        print(f"wrote {args.out / 'aesthetic'}")
    if args.only in (None, "pickscore"):
        pickscore.save_folder(args.out / "pickscore", pickscore.random_scorer(args.small))
        print(f"wrote {args.out / 'pickscore'}")
    if args.only in (None, "imagereward"):
        prompts = tuple(p for prompts in PROMPT_SETS.values() for p in prompts)
        with tempfile.TemporaryDirectory() as tmp:
            model = random_imagereward(write_vocab(Path(tmp), prompts))
        imagereward.save_folder(args.out / "imagereward", model)
        print(f"wrote {args.out / 'imagereward'}")


if __name__ == "__main__":
    main()
