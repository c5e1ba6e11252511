"""Prompt sets: a built-in set by name, or a text file. Each epoch draws its prompts with a seeded generator.

Built-in sets, from DDPO's code (ddpo-pytorch, `ddpo_pytorch/assets`) and paper (arXiv 2305.13301):
- `animals`: "a photo of a <animal>" for 24 of the simple animals (the default; kept as it was).
- `simple-animals`: the 45 common animals DDPO and D3PO train aesthetic and compressibility on, as bare
  names, exactly as ddpo-pytorch feeds them to the model.
- `unseen-animals` and `everyday-objects`: ddpo-pytorch's `uncommon_animals.txt` and `everyday_objects.txt`,
  the prompts DDPO uses to test whether training on simple animals generalises to prompts it never saw;
  `unseen-animals` is the evaluation set of `animals` and `simple-animals`.
- `animal-activities`: "a(n) <animal> <activity>" for the 45 animals and the paper's three activities, DDPO's
  prompt-alignment task; prompt-conditioned rewards (imagereward) have something to judge there.
- `shapes` and `shapes-eval`: captions of the tiny model's world (rlft/world/scenes.py), "a small red
circle on a noisy blue background"; `shapes-eval` holds every eighth caption, `shapes` the rest, so the
evaluation set (rlft/evaluation.py) judges prompts training never draws.
Sets shipped as text files in rlft/prompt_sets/ (package data, read with importlib.resources, so they load
from an installed wheel too), for real models:
- `scenes` and `scenes-eval`: 200 and 50 broad prompts (photographs, paintings, illustrations, renders,
  concept art) composed for rlft, for PickScore and aesthetic training on SDXL, SD 3.5 and FLUX.1; no prompt
  is in both. Each file's header says what it holds.
`EVAL_SETS` names the evaluation set of each training set that has one.
A file (`--prompts path/to/prompts.txt`) holds one prompt per line; blank lines and lines starting with # are
skipped. It is read when the config is checked and again at every epoch.
"""

from importlib import resources
from pathlib import Path

import torch

from rlft.world.scenes import all_scenes

# ddpo-pytorch's simple_animals.txt, in its order.
SIMPLE_ANIMALS = (
    "cat dog horse monkey rabbit zebra spider bird sheep deer cow goat lion tiger bear raccoon fox wolf "
    "lizard beetle ant butterfly fish shark whale dolphin squirrel mouse rat snake turtle frog chicken duck "
    "goose bee pig turkey fly llama camel bat gorilla hedgehog kangaroo"
).split()
# The papers' first runs used these 24 (the default set, unchanged so earlier runs stay comparable).
ANIMALS = (
    "cat dog horse monkey rabbit zebra spider bird sheep deer cow goat lion frog chicken duck goose bee pig "
    "turkey fly llama camel bat"
).split()
UNCOMMON_ANIMALS = (
    "Elephant,Giraffe,Hippopotamus,Rhinoceros,Ostrich,Penguin,Seal,Otter,Walrus,Chimpanzee,Orangutan,Koala,"
    "Platypus,Crocodile,Alligator,Komodo dragon,Anaconda,Octopus,Squid,Lobster,Crab,Jellyfish,Starfish,"
    "Seahorse,Pelican,Flamingo,Toucan,Parrot,Peacock,Skunk,Badger,Porcupine,Armadillo,Sloth,Beaver,Moose,"
    "Reindeer,Shoebill stork"
).split(",")
EVERYDAY_OBJECTS = (
    "Toaster,Chair,Car,Coffee cup,Refrigerator,Lamp,Television,Sofa,Computer,Smartphone,Bicycle,Table,"
    "Bookshelf,Clock,Microwave,Blender,Vacuum cleaner,Iron,Washing machine,Dryer,Oven,Dishwasher,Mirror,"
    "Picture frame,Trash can,Plant pot,Water bottle,Backpack,Umbrella,Sunglasses,Wallet,Keychain,Pen,Pencil,"
    "Notebook,Stapler,Scissors,Tape dispenser,Calculator,Eraser,Ruler,Glue stick,Highlighter,Marker,"
    "Post-it notes,Envelope,Stamp,Key,Skull,Flower"
).split(",")
ACTIVITIES = ("riding a bike", "playing chess", "washing the dishes")


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


# Every eighth caption is held out; a fixed shuffle first, so the held-out ones mix every attribute.
_SCENES = all_scenes()  # built once: indexing a fresh list per caption took 7 s at every import
_CAPTIONS = [
    _SCENES[i].caption for i in torch.randperm(len(_SCENES), generator=torch.Generator().manual_seed(0))
]

PROMPT_SETS: dict[str, tuple[str, ...]] = {
    "shapes": tuple(c for i, c in enumerate(_CAPTIONS) if i % 8 != 0),
    "shapes-eval": tuple(c for i, c in enumerate(_CAPTIONS) if i % 8 == 0),
    "animals": tuple(f"a photo of a {a}" for a in ANIMALS),
    "simple-animals": tuple(SIMPLE_ANIMALS),
    "unseen-animals": tuple(UNCOMMON_ANIMALS),
    "everyday-objects": tuple(EVERYDAY_OBJECTS),
    "animal-activities": tuple(f"{_a(a)} {act}" for a in SIMPLE_ANIMALS for act in ACTIVITIES),
}


def prompt_lines(text: str) -> tuple[str, ...]:
    """The prompts in a prompt file's text: one per line, stripped, blank lines and '#' lines skipped."""
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def _packaged(name: str) -> tuple[str, ...]:
    """The set shipped as rlft/prompt_sets/<name>.txt (importlib.resources: found in a wheel too)."""
    return prompt_lines((resources.files("rlft.prompt_sets") / f"{name}.txt").read_text(encoding="utf-8"))


# The sets in rlft/prompt_sets/, by file name without .txt (read once, at import: a few kB).
PACKAGED = ("scenes", "scenes-eval")
PROMPT_SETS |= {name: _packaged(name) for name in PACKAGED}

# The evaluation set of each training set that has one: prompts the training set never holds.
EVAL_SETS = {
    "shapes": "shapes-eval",
    "animals": "unseen-animals",
    "simple-animals": "unseen-animals",
    "scenes": "scenes-eval",
}


def read_prompt_file(path: str) -> tuple[str, ...]:
    """The prompts in a text file, one per line, blank lines and '#' comments skipped."""
    expected = "a built-in set or a UTF-8 text file with one prompt per line"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"prompts={path!r}: no such file; expected {expected}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"prompts={path!r}: cannot read the file ({error}); expected {expected}") from None
    prompts = prompt_lines(text)
    if not prompts:
        raise ValueError(f"prompts={path!r}: the file holds no prompt; expected {expected}")
    return prompts


def load_prompts(prompts: str) -> tuple[str, ...]:
    """The prompts a `--prompts` value names (a built-in set, else a file); ValueError naming the value.

    A name that is neither a built-in set nor an existing path is reported as unknown, listing the sets.
    """
    if prompts in PROMPT_SETS:
        return PROMPT_SETS[prompts]
    if not Path(prompts).exists() and "/" not in prompts and not prompts.endswith(".txt"):
        raise ValueError(
            f"prompts={prompts!r} is not allowed: one of {', '.join(PROMPT_SETS)}, or a path to a text file "
            "with one prompt per line"
        )
    return read_prompt_file(prompts)


def draw_prompts(prompt_set: str, count: int, generator: torch.Generator) -> list[str]:
    """`count` prompts drawn uniformly with replacement from `prompt_set` (a set's name or a file)."""
    prompts = load_prompts(prompt_set)
    picks = torch.randint(len(prompts), (count,), generator=generator)
    return [prompts[i] for i in picks.tolist()]
